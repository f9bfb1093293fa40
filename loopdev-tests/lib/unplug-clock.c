/* unplug-clock: measures, inside the test guest, how long a dm-crypt volume keeps its key and
 * its mapping after a device under it is removed (issue 27's "within one second").
 *
 *   unplug-clock [--timeout SEC] MAPPING DEVNAME...     e.g. unplug-clock probe vda vda2
 *
 * Prints key=present|absent (the volume as found at start, a control), then "ready" once it
 * listens for the kernel's uevents. t0 is the arrival of the first ACTION=remove uevent whose
 * DEVNAME is one of the given names. From then on it asks device-mapper every millisecond,
 * by ioctl (no dmsetup, no udev), until the key is gone from the table (mapping gone, no crypt
 * target, or a key of all '0', as dm-crypt's key wipe leaves it; a key held in the kernel
 * keyring shows as ":64:logon:..." and counts as present) and the mapping is gone. Then:
 *
 *   removed=NAME
 *   t0_unix=SECONDS                             (t0 on the wall clock, to set against the host's)
 *   unplug-clock key_ms=K mapping_ms=M          (ms since t0, 1 decimal; "none" if not by SEC)
 *
 * Removals before "ready" are not seen: wait for it before asking for the unplug, in a file
 * emptied first (a background job's own redirection may come after the caller's first look).
 * SEC (default 10) bounds both the wait for the removal and the measurement after it.
 * Exit 0 once a removal was seen; 1 on a timeout before any removal, or on errors. */
#include <errno.h>
#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <linux/netlink.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DM_KEY_PROG "unplug-clock"
#include "dm-key.h"

static int mapping_exists(int ctl, const char *mapping)
{
    struct dm_ioctl io;
    int err = dm_call(ctl, DM_DEV_STATUS, mapping, 0, &io, sizeof(io));
    if (err && err != ENXIO) {
        fprintf(stderr, "unplug-clock: DM_DEV_STATUS %s: %s\n", mapping, strerror(err));
        exit(1);
    }
    return !err;
}

/* Waits for the first removal of one of names[0..n) announced by the kernel, until deadline
 * (ms, monotonic). Returns the name, or NULL on timeout. */
static const char *wait_removal(int nl, char **names, int n, double deadline)
{
    static char msg[8192];
    for (;;) {
        double left = deadline - now_ms();
        if (left <= 0)
            return NULL;
        struct pollfd p = { .fd = nl, .events = POLLIN };
        if (poll(&p, 1, (int)left + 1) <= 0)
            continue;
        struct sockaddr_nl from;
        struct iovec iov = { msg, sizeof(msg) - 1 };
        struct msghdr mh = { .msg_name = &from, .msg_namelen = sizeof(from),
                             .msg_iov = &iov, .msg_iovlen = 1 };
        ssize_t len = recvmsg(nl, &mh, 0);
        if (len <= 0 || from.nl_pid != 0)
            continue; /* ENOBUFS (events lost) is not fatal; only the kernel's messages count. */
        msg[len] = '\0';
        /* "ACTION@DEVPATH", then KEY=VALUE fields, each NUL-terminated. */
        int removal = 0;
        const char *devname = NULL;
        for (char *f = msg; f < msg + len; f += strlen(f) + 1) {
            if (strcmp(f, "ACTION=remove") == 0)
                removal = 1;
            else if (strncmp(f, "DEVNAME=", 8) == 0)
                devname = f + 8;
        }
        if (!removal || !devname)
            continue;
        for (int i = 0; i < n; i++)
            if (strcmp(devname, names[i]) == 0)
                return names[i];
    }
}

static void print_ms(const char *what, double ms)
{
    if (ms < 0)
        printf(" %s=none", what);
    else
        printf(" %s=%.1f", what, ms);
}

int main(int argc, char **argv)
{
    double timeout_ms = 10000;
    int a = 1;
    if (a + 1 < argc && strcmp(argv[a], "--timeout") == 0) {
        timeout_ms = atof(argv[a + 1]) * 1000;
        a += 2;
    }
    if (argc - a < 2 || timeout_ms <= 0) {
        fprintf(stderr, "usage: unplug-clock [--timeout SEC] MAPPING DEVNAME...\n");
        return 1;
    }
    const char *mapping = argv[a];
    char **names = argv + a + 1;
    int n = argc - a - 1;
    for (int i = 0; i < n; i++)
        if (strncmp(names[i], "/dev/", 5) == 0)
            names[i] += 5;

    int ctl = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) {
        perror("unplug-clock: /dev/mapper/control");
        return 1;
    }
    int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
    struct sockaddr_nl addr = { .nl_family = AF_NETLINK, .nl_groups = 1 };
    int rcvbuf = 1 << 20;
    if (nl >= 0)
        setsockopt(nl, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
    if (nl < 0 || bind(nl, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("unplug-clock: uevent socket");
        return 1;
    }
    printf("key=%s\nready\n", key_present(ctl, mapping) ? "present" : "absent");
    fflush(stdout);

    const char *removed = wait_removal(nl, names, n, now_ms() + timeout_ms);
    if (!removed) {
        fprintf(stderr, "unplug-clock: no removal of the given devices within %.0f s\n",
                timeout_ms / 1000);
        return 1;
    }
    double t0 = now_ms(), key_ms = -1, mapping_ms = -1;
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    /* Nothing is printed until the end: a console write can take milliseconds under TCG. */
    for (;;) {
        double t = now_ms() - t0;
        if (key_ms < 0 && !key_present(ctl, mapping))
            key_ms = t;
        if (mapping_ms < 0 && !mapping_exists(ctl, mapping))
            mapping_ms = t;
        if ((key_ms >= 0 && mapping_ms >= 0) || t > timeout_ms)
            break;
        struct timespec ms = { 0, 1000000 };
        nanosleep(&ms, NULL);
    }
    printf("removed=%s\nt0_unix=%lld.%06ld\nunplug-clock", removed, (long long)wall.tv_sec,
           wall.tv_nsec / 1000);
    print_ms("key_ms", key_ms);
    print_ms("mapping_ms", mapping_ms);
    printf("\n");
    return 0;
}
