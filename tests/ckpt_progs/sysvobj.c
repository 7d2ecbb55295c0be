/* A SysV semaphore set and message queue, no shared memory: every 20 ms the
 * program adds 1 to semaphore 0, sends message N and takes the oldest one
 * back (the queue holds the last three), then checks semaphore 0 is N, the
 * other two kept their values, the message taken is N - 3 and the ids are
 * the ones it created. Appends "ok N" to argv[1], or "bad WHAT" once and
 * exits 1. */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <time.h>
#include <unistd.h>

struct message {
    long type;
    long n;
};

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    int sem = semget(0x5e3a, 3, IPC_CREAT | 0640);
    int q = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    unsigned short init[3] = {0, 7, 32000};
    if (sem < 0 || q < 0 || semctl(sem, 0, SETALL, init))
        return 3;
    for (long n = -2; n <= 0; n++) {
        struct message m = {1, n};
        msgsnd(q, &m, sizeof m.n, 0);
    }
    for (long n = 1;; n++) {
        struct sembuf up = {0, 1, 0};
        struct message m = {1, n}, got = {0, 0};
        if (semop(sem, &up, 1) || msgsnd(q, &m, sizeof m.n, IPC_NOWAIT) ||
            msgrcv(q, &got, sizeof got.n, 0, IPC_NOWAIT) != sizeof got.n) {
            fprintf(out, "bad the semaphore set or queue is gone\n");
            return 1;
        }
        const char *bad = NULL;
        if (semctl(sem, 0, GETVAL) != n)
            bad = "semaphore 0 lost its count";
        else if (semctl(sem, 1, GETVAL) != 7 || semctl(sem, 2, GETVAL) != 32000)
            bad = "semaphores 1 and 2 changed";
        else if (got.n != n - 3)
            bad = "a message was lost or repeated";
        else if (semget(0x5e3a, 0, 0) != sem)
            bad = "the set's key or id changed";
        if (bad) {
            fprintf(out, "bad %s (n %ld, message %ld)\n", bad, n, got.n);
            return 1;
        }
        fprintf(out, "ok %ld\n", n);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
