/* Holds a pidfd of its child (O_NONBLOCK) and checks every 20 ms that it
 * refers to a live process, appending "ok N" to argv[1]. On SIGUSR1 it kills
 * the child through the pidfd, waits for it through the pidfd (P_PIDFD) and
 * appends "killed PID" with the pid waitid reports. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    signal(SIGUSR1, on_usr1);
    pid_t c = fork();
    if (c == 0)
        for (;;)
            pause();
    int pfd = syscall(SYS_pidfd_open, c, O_NONBLOCK);
    if (pfd < 0)
        return 3;
    for (long n = 1;; n++) {
        struct pollfd p = {.fd = pfd, .events = POLLIN};
        if (syscall(SYS_pidfd_send_signal, pfd, 0, NULL, 0) || poll(&p, 1, 0) != 0 ||
            !(fcntl(pfd, F_GETFL) & O_NONBLOCK)) {
            fprintf(out, "bad pidfd\n");
            return 1;
        }
        if (asked) {
            siginfo_t si = {0};
            syscall(SYS_pidfd_send_signal, pfd, SIGKILL, NULL, 0);
            /* Non-blocking pidfd: wait until it is readable first. */
            p.revents = 0;
            poll(&p, 1, 5000);
            if (waitid(P_PIDFD, pfd, &si, WEXITED) == 0)
                fprintf(out, "killed %d\n", si.si_pid);
            return 0;
        }
        fprintf(out, "ok %ld\n", n);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
