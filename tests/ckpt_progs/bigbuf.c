/* Test 2: 512 MiB filled with a pseudo-random pattern; once FILE.go exists the
 * program checks every byte itself and reports. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define SIZE (512UL << 20)
static uint64_t next(uint64_t *s) { *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17; return *s; }
int main(int argc, char **argv) {
    uint64_t *buf = malloc(SIZE), s = 88172645463325252ULL;
    for (size_t i = 0; i < SIZE / 8; i++) buf[i] = next(&s);
    FILE *out = fopen(argv[1], "w");
    fprintf(out, "filled\n"); fflush(out);
    char go[4096]; snprintf(go, sizeof go, "%s.go", argv[1]);
    while (access(go, F_OK) != 0) usleep(20000);
    s = 88172645463325252ULL;
    for (size_t i = 0; i < SIZE / 8; i++)
        if (buf[i] != next(&s)) { fprintf(out, "bad at %zu\n", i); fflush(out); return 1; }
    fprintf(out, "ok\n"); fflush(out);
    for (;;) pause();
}
