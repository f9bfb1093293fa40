/* fake-tor: the live user's bait, an executable named "tor" sitting in /var/lib/tor of its
 * own user+mount namespace; if it ever runs as real root it leaves a marker only root can
 * write (/run/hostile-tor-ran-as-root). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#define MARKER "/run/hostile-tor-ran-as-root"

/* Root of the initial user namespace: uid 0 with the identity map of every uid. */
static int real_root(void)
{
    unsigned a, b, c;
    FILE *f;
    int n;
    if (getuid() != 0 && geteuid() != 0)
        return 0;
    f = fopen("/proc/self/uid_map", "r");
    if (!f)
        return 1;
    n = fscanf(f, "%u %u %u", &a, &b, &c);
    fclose(f);
    return n == 3 && a == 0 && b == 0 && c == 4294967295u;
}

static void put(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        perror(path);
        exit(2);
    }
    close(fd);
}

int main(int argc, char **argv)
{
    const char *go = getenv("HOSTILE_GO"), *ready = getenv("HOSTILE_READY");
    char map[64];
    unsigned uid = getuid(), gid = getgid();
    (void)argc;
    if (real_root()) {
        int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0)
            dprintf(fd, "uid=%u euid=%u pid=%d argv0=%s\n", getuid(), geteuid(), getpid(), argv[0]);
        return 0;
    }
    /* A shell starts background jobs with SIGINT ignored; tor's stop signal must work. */
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    /* Started early (a low pid), armed later: until then its folder is the user's own. */
    while (go && access(go, F_OK) != 0)
        usleep(50000);
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
        perror("unshare");
        return 2;
    }
    put("/proc/self/setgroups", "deny");
    snprintf(map, sizeof map, "0 %u 1", uid);
    put("/proc/self/uid_map", map);
    snprintf(map, sizeof map, "0 %u 1", gid);
    put("/proc/self/gid_map", map);
    if (mount("none", "/var/lib/tor", "tmpfs", 0, "mode=0700") != 0 || chdir("/var/lib/tor") != 0) {
        perror("/var/lib/tor");
        return 2;
    }
    if (ready)
        put(ready, "ready\n");
    for (;;)
        pause();
}
