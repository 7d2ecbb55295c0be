/* Threads that come and go all the time: main starts a short-lived thread
 * for every number, joins it, and appends the number the thread computed to
 * argv[1]. */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

static void *next(void *arg)
{
    long *n = arg;
    struct timespec ts = {0, 200 * 1000};
    nanosleep(&ts, NULL);
    ++*n;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    long n = 0;
    for (;;) {
        pthread_t t[1];
        long before = n;
        pthread_create(&t[0], NULL, next, &n);
        pthread_join(t[0], NULL);
        if (n != before + 1)
            return 3;
        if (n % 50 == 0)
            fprintf(out, "%ld\n", n / 50);
    }
}
