/* signal-after: what sudo does when the live user signals `sudo keepsake ...`: runs the
 * command with SIGINT, SIGTERM and SIGHUP at their defaults (a shell's background job
 * would have SIGINT ignored), sends it SIGNAL after MS milliseconds (0: never), and prints
 * "exit N", "sent" or "not sent" (it had ended first), and "(ended by the signal)" if the
 * signal itself ended it (then N = 128 + the signal), then exits with N.
 *
 *   signal-after MS INT|TERM|HUP|KILL COMMAND [ARG...] */
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

int main(int argc, char **argv)
{
    int sig = argc > 3 ? signal_named(argv[2]) : 0;
    if (!sig) {
        fprintf(stderr, "usage: signal-after MS INT|TERM|HUP|KILL COMMAND [ARG...]\n");
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
    if (ms > 0) {
        struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&t, &t) < 0 && errno == EINTR) {}
        /* Still running (not reaped, not a zombie): the signal reaches it mid-way. */
        if (waitpid(child, &status, WNOHANG) == 0) {
            kill(child, sig);
            sent = 1;
        } else {
            goto done;
        }
    }
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
done:;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("exit %d %s%s\n", code, sent ? "sent" : "not sent",
           WIFSIGNALED(status) ? " (ended by the signal)" : "");
    return code;
}
