/* Test 5: a SIGUSR1 handler and a blocked SIGUSR2; once FILE.go exists, SIGUSR2
 * is unblocked and its handler runs if it was pending. */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static volatile sig_atomic_t usr1, usr2;
static void h1(int s) { usr1++; }
static void h2(int s) { usr2++; }
int main(int argc, char **argv) {
    struct sigaction a = {0};
    a.sa_handler = h1; sigaction(SIGUSR1, &a, NULL);
    a.sa_handler = h2; sigaction(SIGUSR2, &a, NULL);
    sigset_t m; sigemptyset(&m); sigaddset(&m, SIGUSR2); sigprocmask(SIG_BLOCK, &m, NULL);
    FILE *out = fopen(argv[1], "w");
    char go[4096]; snprintf(go, sizeof go, "%s.go", argv[1]);
    int seen1 = 0, unblocked = 0;
    fprintf(out, "ready\n"); fflush(out);
    for (;;) {
        if (usr1 != seen1) { seen1 = usr1; fprintf(out, "usr1 %d\n", seen1); fflush(out); }
        if (!unblocked && access(go, F_OK) == 0) {
            unblocked = 1;
            sigprocmask(SIG_UNBLOCK, &m, NULL);
            fprintf(out, "usr2 %d\n", (int)usr2); fflush(out);
        }
        usleep(10000);
    }
}
