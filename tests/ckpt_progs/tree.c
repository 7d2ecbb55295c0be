/* Test 4: a session of three processes in two groups, and a daemon (its parent
 * exited) sharing a MAP_SHARED|MAP_ANONYMOUS page with a child of its own: the
 * daemon counts in the page, the child copies the count to FILE. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
static void idle(void) { for (;;) usleep(50000); }
int main(int argc, char **argv) {
    setsid();
    if (fork() == 0) {               /* group leader in the same session */
        setpgid(0, 0);
        if (fork() == 0) idle();     /* member of that group */
        idle();
    }
    if (fork() == 0) {               /* intermediate: leaves the daemon orphaned */
        if (fork() == 0) {
            volatile long *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
            if (fork() == 0) {
                FILE *out = fopen(argv[1], "w");
                for (;;) { fprintf(out, "%ld\n", *page); fflush(out); usleep(20000); }
            }
            for (;;) { (*page)++; usleep(10000); }
        }
        _exit(0);
    }
    for (;;) { wait(NULL); usleep(50000); }
}
