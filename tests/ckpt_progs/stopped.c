/* A parent that stops its child with SIGSTOP and reports what waitpid with
 * WUNTRACED | WCONTINUED tells it: "stopped SIG", "continued", "exited". The
 * child appends a counter to argv[1].child every 10 ms. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char path[4096];
    if (argc < 2)
        return 2;
    snprintf(path, sizeof path, "%s.child", argv[1]);
    pid_t c = fork();
    if (c == 0) {
        FILE *f = fopen(path, "a");
        setvbuf(f, NULL, _IOLBF, 0);
        for (long n = 1;; n++) {
            fprintf(f, "%ld\n", n);
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    usleep(200 * 1000);
    kill(c, SIGSTOP);
    for (;;) {
        int st;
        if (waitpid(c, &st, WUNTRACED | WCONTINUED) < 0)
            return 0;
        if (WIFSTOPPED(st))
            fprintf(out, "stopped %d\n", WSTOPSIG(st));
        else if (WIFCONTINUED(st))
            fprintf(out, "continued\n");
        else {
            fprintf(out, "exited\n");
            return 0;
        }
    }
}
