/* A parent with two ended children it has not reaped: one exited with 7, one
 * killed by SIGTERM. It appends a counter to argv[1] every 10 ms; once
 * argv[1].reap exists it reaps them and appends "exit 7" and "signal 15". */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char reap[4096];
    if (argc < 2)
        return 2;
    snprintf(reap, sizeof reap, "%s.reap", argv[1]);
    pid_t a = fork();
    if (a == 0)
        _exit(7);
    pid_t b = fork();
    if (b == 0) {
        pause();
        _exit(0);
    }
    kill(b, SIGTERM);
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    for (long n = 1; access(reap, F_OK) != 0; n++) {
        fprintf(out, "%ld\n", n);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int st;
    waitpid(a, &st, 0);
    fprintf(out, WIFEXITED(st) ? "exit %d\n" : "odd %d\n", WEXITSTATUS(st));
    waitpid(b, &st, 0);
    fprintf(out, WIFSIGNALED(st) ? "signal %d\n" : "odd %d\n", WTERMSIG(st));
    return 0;
}
