/* Test 3: the parent writes lines into a pipe (three at once, then one per
 * nanosleep); the child waits for FILE.go, then reads the pipe (blocking in read)
 * and appends what it gets to FILE. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int p[2];
    pipe(p);
    if (fork() == 0) {
        close(p[1]);
        char go[4096]; snprintf(go, sizeof go, "%s.go", argv[1]);
        while (access(go, F_OK) != 0) usleep(20000);
        FILE *out = fopen(argv[1], "a");
        char buf[256];
        for (;;) {
            ssize_t n = read(p[0], buf, sizeof buf);
            if (n <= 0) return 0;
            fwrite(buf, 1, n, out); fflush(out);
        }
    }
    close(p[0]);
    char line[32];
    for (int i = 1;; i++) {
        int n = snprintf(line, sizeof line, "%d\n", i);
        write(p[1], line, n);
        if (i >= 3) { struct timespec t = {0, 100000000}; nanosleep(&t, NULL); }
    }
}
