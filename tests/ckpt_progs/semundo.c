/* A process that took a SysV semaphore with SEM_UNDO (its exit would give it
 * back), which cannot be checkpointed; it counts into FILE so the test sees
 * it keep running. */
#include <stdio.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int id = semget(IPC_PRIVATE, 1, 0600);
    struct sembuf up = {0, 1, SEM_UNDO};
    if (id < 0 || semop(id, &up, 1) < 0) { perror("sem"); return 1; }
    FILE *out = fopen(argv[1], "w");
    for (long i = 1;; i++) { fprintf(out, "%ld\n", i); fflush(out); usleep(10000); }
}
