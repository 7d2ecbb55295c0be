/* SysV shared memory attached in two processes: segment A (read-write in
 * both; the parent counts in it, the child copies the count), segment B
 * (read-only in the child), segment C (removed with IPC_RMID while still
 * attached). Every 20 ms the parent checks the segments' ids, contents,
 * attach counts and removal mark, and appends "ok N" to argv[1], or
 * "bad WHAT" once and exits 1. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#define SIZE (64 * 1024)

static void nap(void)
{
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    int a = shmget(IPC_PRIVATE, SIZE, IPC_CREAT | 0600);
    int b = shmget(0x5eed, SIZE, IPC_CREAT | 0640);
    int c = shmget(IPC_PRIVATE, 3 * 4096, IPC_CREAT | 0600);
    volatile long *pa = shmat(a, NULL, 0);
    char *pb = shmat(b, NULL, 0);
    char *pc = shmat(c, NULL, 0);
    if (pa == (void *)-1 || pb == (void *)-1 || pc == (void *)-1)
        return 3;
    memset(pb, 'b', SIZE);
    strcpy(pc, "still here");
    shmctl(c, IPC_RMID, NULL);
    pid_t child = fork();
    if (child == 0) {
        shmdt(pb);
        const char *ro = shmat(b, NULL, SHM_RDONLY);
        for (;;) {
            pa[1] = pa[0];
            pa[2] = ro[SIZE - 1];
            nap();
        }
    }
    for (long n = 1;; n++) {
        struct shmid_ds da, dc;
        const char *bad = NULL;
        pa[0] = n;
        nap();
        nap();
        if (shmctl(a, IPC_STAT, &da) || shmctl(c, IPC_STAT, &dc))
            bad = "a segment id changed";
        else if (da.shm_nattch != 2)
            bad = "segment A is not attached twice";
        else if (!(dc.shm_perm.mode & SHM_DEST))
            bad = "segment C lost its removal";
        else if (shmget(0x5eed, 0, 0) != b)
            bad = "segment B's key or id changed";
        else if (pa[1] < n - 1 || pa[2] != 'b')
            bad = "the child does not see segment A or B";
        else if (strcmp(pc, "still here") || pb[123] != 'b')
            bad = "content lost";
        if (bad) {
            fprintf(out, "bad %s\n", bad);
            kill(child, SIGKILL);
            return 1;
        }
        fprintf(out, "ok %ld\n", n);
    }
}
