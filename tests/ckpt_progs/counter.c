/* Test 1 and 6: counts in a heap buffer and an anonymous mapping, appends each
 * value to a file it keeps open, sleeps between steps. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long *heap = calloc(1024, sizeof(long));
    long *anon = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char line[64];
    for (;;) {
        heap[7]++;
        anon[100]++;
        if (heap[7] != anon[100]) {
            write(fd, "MISMATCH\n", 9);
            return 3;
        }
        int n = snprintf(line, sizeof line, "%ld\n", heap[7]);
        write(fd, line, n);
        usleep(10000);
    }
}
