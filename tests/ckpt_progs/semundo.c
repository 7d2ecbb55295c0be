/* SysV semaphore undo lists. Two children change an array of three
 * semaphores with SEM_UNDO: A takes semaphore 0 (a lock, 1 -> 0) and 3 from
 * semaphore 2; B adds 2 to semaphore 1 and takes 2 from semaphore 2. The
 * parent appends "ok N" to argv[1] every 20 ms while the values are 0 2 5.
 * Once argv[2] exists it kills A, and the kernel must give back A's part
 * (1 2 8), then B (1 0 10): it writes "A undone" and "B undone", or
 * "bad WHAT" and exits 1. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int sem;

static void op(int num, int delta)
{
    struct sembuf b = {num, delta, SEM_UNDO};
    if (semop(sem, &b, 1))
        _exit(3);
}

static int is(int a, int b, int c)
{
    unsigned short v[3];
    return semctl(sem, 0, GETALL, v) == 0 && v[0] == a && v[1] == b && v[2] == c;
}

static void nap(void)
{
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static pid_t child(int which)
{
    pid_t p = fork();
    if (p == 0) {
        if (which == 0) {
            op(0, -1);
            op(2, -3);
        } else {
            op(1, 2);
            op(2, -2);
        }
        for (;;)
            pause();
    }
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    sem = semget(IPC_PRIVATE, 3, 0600);
    unsigned short init[3] = {1, 0, 10};
    if (sem < 0 || semctl(sem, 0, SETALL, init))
        return 3;
    pid_t a = child(0);
    while (!is(0, 0, 7))
        nap();
    pid_t b = child(1);
    while (!is(0, 2, 5))
        nap();
    for (long n = 1;; n++) {
        if (!is(0, 2, 5)) {
            fprintf(out, "bad values changed\n");
            return 1;
        }
        if (access(argv[2], F_OK) == 0)
            break;
        fprintf(out, "ok %ld\n", n);
        nap();
    }
    kill(a, SIGKILL);
    waitpid(a, NULL, 0);
    if (!is(1, 2, 8)) {
        fprintf(out, "bad A's adjustments were not made\n");
        return 1;
    }
    fprintf(out, "A undone\n");
    kill(b, SIGKILL);
    waitpid(b, NULL, 0);
    if (!is(1, 0, 10)) {
        fprintf(out, "bad B's adjustments were not made\n");
        return 1;
    }
    fprintf(out, "B undone\n");
    return 0;
}
