/* ns-holder: the live user hides the volume in namespaces of its own. In a new user+mount
 * namespace (made while the volume is mounted, so it holds a copy of the volume's mounts),
 * it makes sure that its own /proc/PID/mountinfo, read from the host, shows none of them,
 * then waits:
 *   chroot JAIL          chrooted into JAIL, a folder off the volume
 *   pivot  JAIL KEEP     pivot_root into a tmpfs on JAIL holding a bind of KEEP (a folder of
 *                        the volume), the old root detached (MNT_DETACH), nothing kept open
 *   pidns  JAIL          pid 1 of its own pid namespace, chrooted into JAIL with a private
 *                        /proc mounted there
 *   cover  JAIL          a tmpfs moved over the namespace's root, chrooted into it: the
 *                        copies of the volume's mounts are under it, where no mount table
 *                        read inside the namespace (after setns) shows them
 * Usage: ns-holder VARIANT READY JAIL [KEEP]. Once in place it writes the host pid of the
 * process that holds the namespace to READY (opened before anything changed). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void put(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        die(path);
    close(fd);
}

/* Into a new user namespace (root there, the user outside) and mount namespace, whose
 * mounts propagate nothing to or from the host's. */
static void own_namespaces(int more)
{
    char map[64];
    unsigned uid = getuid(), gid = getgid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS | more) != 0)
        die("unshare");
    put("/proc/self/setgroups", "deny");
    snprintf(map, sizeof map, "0 %u 1", uid);
    put("/proc/self/uid_map", map);
    snprintf(map, sizeof map, "0 %u 1", gid);
    put("/proc/self/gid_map", map);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        die("making / private");
}

static void jail(const char *dir)
{
    if (chroot(dir) != 0)
        die("chroot");
    if (chdir("/") != 0)
        die("chdir /");
}

static void ready(int fd, pid_t pid)
{
    dprintf(fd, "%d\n", (int)pid);
    close(fd);
}

static void wait_forever(void)
{
    for (;;)
        pause();
}

int main(int argc, char **argv)
{
    const char *variant, *jail_dir;
    int fd;
    if (argc < 4 || (strcmp(argv[1], "pivot") == 0 && argc < 5)) {
        fprintf(stderr, "usage: ns-holder chroot|pivot|pidns|cover READY JAIL [KEEP]\n");
        return 2;
    }
    variant = argv[1];
    jail_dir = argv[3];
    /* A shell starts background jobs with some signals ignored; keepsake's must work. */
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die(argv[2]);

    if (strcmp(variant, "chroot") == 0) {
        own_namespaces(0);
        jail(jail_dir);
        ready(fd, getpid());
        wait_forever();
    }

    if (strcmp(variant, "pivot") == 0) {
        own_namespaces(0);
        /* The test VM's root is the initramfs (rootfs), which pivot_root refuses (EINVAL):
         * first a bind of / is moved over it, as switch_root does (Tails' root is an
         * overlay, and needs nothing of this). */
        if (mount("/", jail_dir, NULL, MS_BIND | MS_REC, NULL) != 0 || chdir(jail_dir) != 0
            || mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 || chdir("/") != 0)
            die("a root pivot_root takes");
        if (mount("none", jail_dir, "tmpfs", 0, "mode=0755") != 0)
            die("tmpfs on the new root");
        if (chdir(jail_dir) != 0 || mkdir("old", 0700) != 0 || mkdir("keep", 0700) != 0)
            die("new root's folders");
        if (mount(argv[4], "keep", NULL, MS_BIND | MS_REC, NULL) != 0)
            die("bind of KEEP");
        if (syscall(SYS_pivot_root, ".", "old") != 0)
            die("pivot_root");
        if (chdir("/") != 0 || umount2("/old", MNT_DETACH) != 0 || rmdir("/old") != 0)
            die("detaching the old root");
        ready(fd, getpid());
        wait_forever();
    }

    if (strcmp(variant, "cover") == 0) {
        own_namespaces(0);
        if (mount("none", jail_dir, "tmpfs", 0, "mode=0755") != 0 || chdir(jail_dir) != 0
            || mount(".", "/", NULL, MS_MOVE, NULL) != 0)
            die("a tmpfs over /");
        jail(".");
        ready(fd, getpid());
        wait_forever();
    }

    if (strcmp(variant, "pidns") == 0) {
        pid_t child;
        int p[2];
        char c;
        own_namespaces(CLONE_NEWPID);
        if (pipe(p) != 0)
            die("pipe");
        child = fork();
        if (child < 0)
            die("fork");
        if (child == 0) {
            /* pid 1 of the new pid namespace: SIGTERM from outside does not reach it
             * (no handler), only SIGKILL does. */
            close(fd);
            close(p[0]);
            jail(jail_dir);
            mkdir("/proc", 0555);
            if (mount("proc", "/proc", "proc", 0, NULL) != 0)
                die("a private /proc");
            if (write(p[1], "x", 1) != 1)
                die("pipe");
            close(p[1]);
            wait_forever();
        }
        close(p[1]);
        if (read(p[0], &c, 1) != 1)
            return 2;
        /* The host pid of the namespace's pid 1; this process leaves. */
        ready(fd, child);
        return 0;
    }
    fprintf(stderr, "ns-holder: unknown variant %s\n", variant);
    return 2;
}
