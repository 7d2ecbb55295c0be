/* Objects without a file shared by two processes (made before fork): an
 * eventfd, a periodic timerfd, a signalfd for SIGUSR1, an inotify watching
 * argv[1].d and an epoll holding all four. The child writes 1 to the eventfd
 * and sends SIGUSR1 to the parent every 10 ms; the parent reads everything
 * through the epoll and appends "N EVENTFD TICKS INOTIFY USR1" to argv[1]
 * every 20 ms. If the two processes held two copies of an object, the
 * parent's counts would stop. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char dir[4096];
    if (argc < 2)
        return 2;
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    snprintf(dir, sizeof dir, "%s.d", argv[1]);
    mkdir(dir, 0755);
    int efd = eventfd(0, EFD_NONBLOCK);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec it = {{0, 10 * 1000 * 1000}, {0, 10 * 1000 * 1000}};
    timerfd_settime(tfd, 0, &it, NULL);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, NULL);
    int sfd = signalfd(-1, &m, SFD_NONBLOCK);
    int ifd = inotify_init1(IN_NONBLOCK);
    if (inotify_add_watch(ifd, dir, IN_CREATE) < 0)
        return 3;
    int ep = epoll_create1(0);
    int fds[4] = {efd, tfd, sfd, ifd};
    for (int i = 0; i < 4; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    pid_t parent = getpid();
    if (fork() == 0) {
        for (;;) {
            uint64_t one = 1;
            write(efd, &one, 8);
            kill(parent, SIGUSR1);
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    long n = 0, counts[4] = {0, 0, 0, 0};
    struct timespec last;
    clock_gettime(CLOCK_MONOTONIC, &last);
    for (;;) {
        struct epoll_event got[4];
        int k = epoll_wait(ep, got, 4, 20);
        for (int i = 0; i < k; i++) {
            int w = got[i].data.u64;
            char buf[4096];
            uint64_t v;
            if (w <= 1 && read(fds[w], &v, 8) == 8)
                counts[w] += v;
            else if (w == 2)
                while (read(sfd, buf, sizeof(struct signalfd_siginfo)) > 0)
                    counts[2]++;
            else if (w == 3) {
                ssize_t r;
                while ((r = read(ifd, buf, sizeof buf)) > 0)
                    for (char *p = buf; p < buf + r;
                         p += sizeof(struct inotify_event) + ((struct inotify_event *)p)->len)
                        counts[3]++;
            }
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - last.tv_sec) * 1000 + (now.tv_nsec - last.tv_nsec) / 1000000 >= 20) {
            last = now;
            fprintf(out, "%ld %ld %ld %ld %ld\n", ++n, counts[0], counts[1], counts[3], counts[2]);
        }
    }
}
