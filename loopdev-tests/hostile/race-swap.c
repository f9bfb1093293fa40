/* race-swap: the live user's side of the symlink races: waits (inotify) for root to create
 * something in DIR, then swaps that new folder, or DIR itself, for a symlink to TARGET.
 *
 *   race-swap new-dir DIR NAME TARGET READY TIMEOUT_MS
 *       the first folder made in (or moved into) DIR named NAME ("*": any name) becomes a
 *       symlink to TARGET; the folder is kept aside as DIR/.hostile-aside-PID
 *   race-swap parent DIR NAME TARGET READY TIMEOUT_MS
 *       once NAME appears in DIR, DIR becomes a symlink to TARGET (DIR is kept aside as
 *       DIR.hostile-aside)
 *
 * READY is created once the watch is in place. Prints one line; exits 0 after a swap,
 * 3 on timeout, 2 on error. The swap is one renameat2(RENAME_EXCHANGE) with a symlink
 * made beforehand (rename + symlink where the filesystem cannot exchange). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

static int swap(const char *path, const char *aside, const char *target)
{
    if (renameat2(AT_FDCWD, aside, AT_FDCWD, path, RENAME_EXCHANGE) == 0)
        return 0;
    if (errno != EINVAL)
        return -1;
    unlink(aside);
    if (rename(path, aside) != 0)
        return -1;
    return symlink(target, path);
}

int main(int argc, char **argv)
{
    char buf[4096] __attribute__((aligned(8)));
    char path[PATH_MAX], aside[PATH_MAX];
    const char *mode, *dir, *name, *target, *ready;
    int parent, fd, timeout_ms;
    if (argc != 7) {
        fprintf(stderr, "usage: race-swap new-dir|parent DIR NAME TARGET READY TIMEOUT_MS\n");
        return 2;
    }
    mode = argv[1], dir = argv[2], name = argv[3], target = argv[4], ready = argv[5];
    timeout_ms = atoi(argv[6]);
    parent = strcmp(mode, "parent") == 0;
    if (parent)
        snprintf(aside, sizeof aside, "%s.hostile-aside", dir);
    else
        snprintf(aside, sizeof aside, "%s/.hostile-aside-%d", dir, getpid());
    unlink(aside);
    if (symlink(target, aside) != 0) { /* made before the watch: it raises no event */
        perror(aside);
        return 2;
    }
    fd = inotify_init1(IN_CLOEXEC);
    if (fd < 0 || inotify_add_watch(fd, dir, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR) < 0) {
        perror(dir);
        return 2;
    }
    close(open(ready, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        ssize_t n, off;
        if (poll(&p, 1, timeout_ms) <= 0) {
            printf("race-swap: nothing to swap in %s within %d ms\n", dir, timeout_ms);
            return 3;
        }
        n = read(fd, buf, sizeof buf);
        for (off = 0; off < n;) {
            struct inotify_event *ev = (struct inotify_event *)(buf + off);
            off += sizeof *ev + ev->len;
            if (!ev->len || strncmp(ev->name, ".hostile-aside", 14) == 0)
                continue;
            if (strcmp(name, "*") != 0 && strcmp(ev->name, name) != 0)
                continue;
            if (parent) {
                if (swap(dir, aside, target) != 0)
                    goto failed;
                printf("race-swap: swapped %s for a symlink to %s once %s appeared\n", dir, target, ev->name);
                return 0;
            }
            if (!(ev->mask & IN_ISDIR))
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, ev->name);
            if (swap(path, aside, target) != 0)
                goto failed;
            printf("race-swap: swapped the new folder %s for a symlink to %s\n", path, target);
            return 0;
        }
    }
failed:
    printf("race-swap: swap failed: %s\n", strerror(errno));
    return 2;
}
