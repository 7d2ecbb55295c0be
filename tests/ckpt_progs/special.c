/* Special files in one epoll loop: a periodic timerfd (every 10 ms), an
 * eventfd in semaphore mode holding 1000, a plain eventfd, a signalfd for
 * SIGUSR1, a non-blocking pipe to itself, and a dup of the epoll descriptor.
 * It holds a flock on argv[1].flock and a POSIX lock on bytes 10-19 of
 * argv[1].posix. On every timer tick it takes one unit of the semaphore and
 * appends "tick T SEM PLAIN USR1 PIPE" to argv[1]; a SIGUSR1 read from the
 * signalfd counts in USR1; PIPE counts bytes drained until EAGAIN. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char path[4096];
    if (argc < 2)
        return 2;
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    snprintf(path, sizeof path, "%s.flock", argv[1]);
    int lf = open(path, O_RDWR | O_CREAT, 0644);
    if (flock(lf, LOCK_EX | LOCK_NB))
        return 3;
    snprintf(path, sizeof path, "%s.posix", argv[1]);
    int pf = open(path, O_RDWR | O_CREAT, 0644);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 10};
    if (fcntl(pf, F_SETLK, &fl))
        return 4;
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec it = {{0, 10 * 1000 * 1000}, {0, 10 * 1000 * 1000}};
    timerfd_settime(tfd, 0, &it, NULL);
    int sem = eventfd(1000, EFD_SEMAPHORE | EFD_NONBLOCK);
    int plain = eventfd(0, EFD_NONBLOCK);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, NULL);
    int sfd = signalfd(-1, &m, SFD_NONBLOCK);
    int p[2];
    pipe2(p, O_NONBLOCK);
    int ep = epoll_create1(0);
    int ep2 = dup(ep);
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u64 = 1;
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.u64 = 2;
    epoll_ctl(ep2, EPOLL_CTL_ADD, sfd, &ev);
    ev.data.u64 = 3;
    ev.events = EPOLLIN | EPOLLET;
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    long ticks = 0, usr1 = 0, drained = 0;
    uint64_t v;
    for (;;) {
        struct epoll_event got[4];
        int n = epoll_wait(ep, got, 4, 1000);
        for (int i = 0; i < n; i++) {
            if (got[i].data.u64 == 1 && read(tfd, &v, 8) == 8) {
                ticks += v;
                uint64_t one;
                if (read(sem, &one, 8) != 8)
                    return 5;
                uint64_t add = 1;
                write(plain, &add, 8);
                write(p[1], "x", 1);
                uint64_t pl = 0;
                read(plain, &pl, 8);
                write(plain, &pl, 8);
                uint64_t left = 0;
                /* The semaphore's value: take all, count, put back. */
                while (read(sem, &one, 8) == 8)
                    left++;
                uint64_t back = left;
                if (back)
                    write(sem, &back, 8);
                fprintf(out, "tick %ld %lu %lu %ld %ld\n", ticks, (unsigned long)left,
                        (unsigned long)pl, usr1, drained);
            } else if (got[i].data.u64 == 2) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == sizeof si)
                    usr1++;
            } else if (got[i].data.u64 == 3) {
                char b[64];
                ssize_t k;
                while ((k = read(p[0], b, sizeof b)) > 0)
                    drained += k;
                if (errno != EAGAIN)
                    return 6;
            }
        }
    }
}
