/* argv[2] MiB spread over four threads, each filling its share with a pattern
 * of its own and verifying it in a busy loop; a SIGUSR1 handler counts. With
 * argv[3] = "pause" the threads sleep in pause() instead. Main appends
 * "alive USR1 BAD" to argv[1] every 20 ms (BAD counts pattern mismatches). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile long usr1, bad;
static size_t share;
static unsigned char *mem;
static int sleepy;

static void on_usr1(int s) { (void)s; usr1++; }

static void *work(void *arg)
{
    long k = (long)arg;
    unsigned char *p = mem + k * share;
    for (size_t i = 0; i < share; i++)
        p[i] = (unsigned char)(i * 7 + k);
    for (;;) {
        if (sleepy) {
            pause();
            continue;
        }
        for (size_t i = 0; i < share; i += 4096)
            if (p[i] != (unsigned char)(i * 7 + k))
                bad++;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    sleepy = argc > 3 && strcmp(argv[3], "pause") == 0;
    share = (size_t)atol(argv[2]) << 18;
    mem = malloc(share * 4);
    signal(SIGUSR1, on_usr1);
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    pthread_t t;
    for (long k = 0; k < 4; k++)
        pthread_create(&t, NULL, work, (void *)k);
    for (;;) {
        usleep(20 * 1000);
        fprintf(out, "alive %ld %ld\n", usr1, bad);
    }
}
