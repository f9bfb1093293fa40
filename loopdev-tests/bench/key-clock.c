/* key-clock: times, inside the test guest, how long a command takes to wipe the key of a
 * dm-crypt volume: from just before the command starts to "no key in the table", and to the
 * command's exit. The counterpart of lib/unplug-clock for a wipe on command (keepsake lock
 * --now, cryptsetup luksSuspend) rather than on a pull; loopdev-tests/bench/unplug uses both.
 *
 *   key-clock MAPPING COMMAND [ARG...]
 *
 * The command runs with this program's standard input, output and error. t0 is taken just
 * before the fork. Until the key is gone, device-mapper is asked every millisecond, by ioctl,
 * whether MAPPING's live table still holds a key, judged as unplug-clock judges it (mapping
 * gone, no crypt target, or a key of all '0', as dm-crypt's key wipe leaves it, count as
 * absent); then the command is waited for. At its end, on standard error:
 *
 *   key-clock key_ms=K exit_ms=E rc=R        (ms since t0, 1 decimal; key_ms=none if the key
 *                                             was still there when the command ended)
 *
 * Exits with the command's status; 125 if the key was absent at the start (nothing to time),
 * 126 if the command could not be started. */
#include <errno.h>
#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DM_KEY_PROG "key-clock"
#include "../lib/dm-key.h"

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: key-clock MAPPING COMMAND [ARG...]\n");
        return 2;
    }
    const char *mapping = argv[1];
    int ctl = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
    if (ctl < 0) {
        perror("key-clock: /dev/mapper/control");
        return 1;
    }
    if (!key_present(ctl, mapping)) {
        fprintf(stderr, "key-clock: %s holds no key at the start\n", mapping);
        return 125;
    }
    fflush(NULL);
    double t0 = now_ms(), key_ms = -1;
    pid_t child = fork();
    if (child < 0) {
        perror("key-clock: fork");
        return 126;
    }
    if (child == 0) {
        execvp(argv[2], argv + 2);
        fprintf(stderr, "key-clock: %s: %s\n", argv[2], strerror(errno));
        _exit(126);
    }
    int status = 0;
    for (;;) {
        pid_t done = waitpid(child, &status, WNOHANG);
        double t = now_ms() - t0;
        if (!key_present(ctl, mapping)) {
            key_ms = t;
            break;
        }
        if (done == child)
            goto exited;
        struct timespec ms = { 0, 1000000 };
        nanosleep(&ms, NULL);
    }
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
exited:;
    double exit_ms = now_ms() - t0;
    int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (key_ms < 0)
        fprintf(stderr, "key-clock key_ms=none exit_ms=%.1f rc=%d\n", exit_ms, rc);
    else
        fprintf(stderr, "key-clock key_ms=%.1f exit_ms=%.1f rc=%d\n", key_ms, exit_ms, rc);
    return rc;
}
