/* signal-after: what sudo does when the live user signals `sudo keepsake ...`: runs the
 * command with SIGINT, SIGTERM and SIGHUP at their defaults (a shell's background job
 * would have SIGINT ignored), sends it SIGNAL after MS milliseconds (0: never), and prints
 * "exit N", "sent" or "not sent" (it had ended first), and "(ended by the signal)" if the
 * signal itself ended it (then N = 128 + the signal), then exits with N. With --seen
 * DIR PREFIX, the MS count from when an entry whose name starts with PREFIX appears in DIR
 * (looked for every 5 ms; printed as "seen at T ms"), so that the signal lands at a chosen
 * point of the command's work whatever the machine's speed.
 *
 *   signal-after [--seen DIR PREFIX] MS INT|TERM|HUP|KILL COMMAND [ARG...] */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int signal_named(const char *name)
{
    if (!strcmp(name, "INT")) return SIGINT;
    if (!strcmp(name, "TERM")) return SIGTERM;
    if (!strcmp(name, "HUP")) return SIGHUP;
    if (!strcmp(name, "KILL")) return SIGKILL;
    return 0;
}

static long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int seen(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    if (!d) return 0;
    while (!found && (e = readdir(d)))
        found = !strncmp(e->d_name, prefix, strlen(prefix));
    closedir(d);
    return found;
}

static void sleep_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) < 0 && errno == EINTR) {}
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *prefix = NULL;
    if (argc > 3 && !strcmp(argv[1], "--seen")) {
        dir = argv[2];
        prefix = argv[3];
        argc -= 3;
        argv += 3;
    }
    int sig = argc > 3 ? signal_named(argv[2]) : 0;
    if (!sig) {
        fprintf(stderr, "usage: signal-after [--seen DIR PREFIX] MS INT|TERM|HUP|KILL COMMAND [ARG...]\n");
        return 2;
    }
    long ms = atol(argv[1]);
    pid_t child = fork();
    if (child < 0) return 2;
    if (child == 0) {
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        execvp(argv[3], argv + 3);
        _exit(127);
    }
    int status, sent = 0;
    long start = now_ms();
    if (dir) {
        while (!seen(dir, prefix)) {
            if (waitpid(child, &status, WNOHANG) != 0) {
                printf("never seen %s in %s\n", prefix, dir);
                goto done;
            }
            sleep_ms(5);
        }
        printf("seen at %ld ms\n", now_ms() - start);
    }
    if (ms > 0 || dir) {
        long from = now_ms();
        while (now_ms() - from < ms) {
            if (waitpid(child, &status, WNOHANG) != 0)
                goto done;
            sleep_ms(5);
        }
        /* Still running (not reaped, not a zombie): the signal reaches it mid-way. */
        if (waitpid(child, &status, WNOHANG) == 0) {
            kill(child, sig);
            sent = 1;
        } else {
            goto done;
        }
    }
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
done:
    printf("ended at %ld ms\n", now_ms() - start);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("exit %d %s%s\n", code, sent ? "sent" : "not sent",
           WIFSIGNALED(status) ? " (ended by the signal)" : "");
    return code;
}
