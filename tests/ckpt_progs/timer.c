/* Interval timers: SIGALRM from ITIMER_REAL every 20 ms counts; the count is
 * written to FILE whenever it changes. */
#include <signal.h>
#include <stdio.h>
#include <sys/time.h>
#include <unistd.h>
static volatile sig_atomic_t ticks;
static void tick(int s) { ticks++; }
int main(int argc, char **argv) {
    struct sigaction a = {0};
    a.sa_handler = tick;
    sigaction(SIGALRM, &a, NULL);
    struct itimerval t = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &t, NULL);
    FILE *out = fopen(argv[1], "w");
    int seen = 0;
    for (;;) {
        pause();
        if (ticks != seen) { seen = ticks; fprintf(out, "%d\n", seen); fflush(out); }
    }
}
