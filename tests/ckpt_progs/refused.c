/* Holds one resource a checkpoint must refuse, chosen by argv[2], then appends
 * 1, 2, 3, ... to argv[1] every 20 ms:
 *   io_uring, perf, userfaultfd, pidfd-outside (a pidfd of the init, which
 *   is not part of the application), tty (a pseudo-terminal master),
 *   proc-mem (/proc/CHILD/mem), inotify-queued (an event not read yet),
 *   sysv-sem-undo (a semaphore operation with SEM_UNDO; not refused: its
 *   undo list cannot be seen, see checkpoint(1)). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/perf_event.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    const char *m = argv[2];
    int fd = -1;
    if (!strcmp(m, "io_uring")) {
        char params[120] = {0};
        fd = syscall(__NR_io_uring_setup, 4, params);
    } else if (!strcmp(m, "perf")) {
        struct perf_event_attr a = {.type = PERF_TYPE_SOFTWARE,
                                    .size = sizeof a,
                                    .config = PERF_COUNT_SW_TASK_CLOCK,
                                    .exclude_kernel = 1};
        fd = syscall(__NR_perf_event_open, &a, 0, -1, -1, 0);
    } else if (!strcmp(m, "userfaultfd")) {
        fd = syscall(__NR_userfaultfd, O_CLOEXEC);
    } else if (!strcmp(m, "pidfd-outside")) {
        fd = syscall(__NR_pidfd_open, 1, 0);
    } else if (!strcmp(m, "tty")) {
        fd = open("/dev/ptmx", O_RDWR | O_NOCTTY);
    } else if (!strcmp(m, "proc-mem")) {
        pid_t c = fork();
        if (c == 0)
            for (;;)
                pause();
        char p[64];
        snprintf(p, sizeof p, "/proc/%d/mem", c);
        fd = open(p, O_RDONLY);
    } else if (!strcmp(m, "inotify-queued")) {
        char d[4096];
        snprintf(d, sizeof d, "%s.d", argv[1]);
        mkdir(d, 0755);
        fd = inotify_init1(0);
        inotify_add_watch(fd, d, IN_CREATE);
        strcat(d, "/x");
        close(open(d, O_CREAT | O_WRONLY, 0644));
    }
    if (fd < 0)
        return 3;
    for (long n = 1;; n++) {
        fprintf(out, "%ld\n", n);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
