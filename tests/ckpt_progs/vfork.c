/* A parent that vforks again and again; each child lingers 100 ms before it
 * calls execve (so checkpoints find the parent blocked in vfork) and then runs
 * "true". After each child, the parent appends the next number to argv[1]. */
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    for (long n = 1;; n++) {
        pid_t c = vfork();
        if (c == 0) {
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
            execl("/bin/true", "true", (char *)NULL);
            _exit(127);
        }
        int st;
        waitpid(c, &st, 0);
        fprintf(out, "%ld\n", n);
    }
}
