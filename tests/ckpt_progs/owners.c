/* File state that fdinfo does not show: a read lease on argv[1].r (opened
 * read-only) and a write lease on argv[1].w (read-write), and a pipe whose
 * read end is O_ASYNC with this process as owner (F_SETOWN) and SIGRTMIN+1 as
 * its signal (F_SETSIG). Every 20 ms it checks the leases, owner and signal,
 * writes a byte into the pipe and expects the signal; it appends "ok N" to
 * argv[1], or "bad WHAT" once and exits 1. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got;

static void on_io(int sig) { (void)sig; got++; }

int main(int argc, char **argv)
{
    char path[4096];
    if (argc < 2)
        return 2;
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    snprintf(path, sizeof path, "%s.r", argv[1]);
    close(open(path, O_WRONLY | O_CREAT, 0644));
    int r = open(path, O_RDONLY);
    snprintf(path, sizeof path, "%s.w", argv[1]);
    int w = open(path, O_RDWR | O_CREAT, 0644);
    if (fcntl(r, F_SETLEASE, F_RDLCK) || fcntl(w, F_SETLEASE, F_WRLCK))
        return 3;
    int p[2];
    pipe2(p, O_NONBLOCK);
    signal(SIGRTMIN + 1, on_io);
    if (fcntl(p[0], F_SETOWN, getpid()) || fcntl(p[0], F_SETSIG, SIGRTMIN + 1) ||
        fcntl(p[0], F_SETFL, O_ASYNC | O_NONBLOCK))
        return 4;
    for (long n = 1;; n++) {
        const char *bad = NULL;
        if (fcntl(r, F_GETLEASE) != F_RDLCK)
            bad = "read lease";
        else if (fcntl(w, F_GETLEASE) != F_WRLCK)
            bad = "write lease";
        else if (fcntl(p[0], F_GETOWN) != getpid())
            bad = "owner";
        else if (fcntl(p[0], F_GETSIG) != SIGRTMIN + 1)
            bad = "signal";
        else if (!(fcntl(p[0], F_GETFL) & O_ASYNC))
            bad = "O_ASYNC";
        if (!bad) {
            int before = got;
            char c = 'x';
            write(p[1], &c, 1);
            for (int i = 0; i < 100 && got == before; i++) {
                struct timespec ts = {0, 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            read(p[0], &c, 1);
            if (got == before)
                bad = "no signal for the ready pipe";
        }
        if (bad) {
            fprintf(out, "bad %s\n", bad);
            return 1;
        }
        fprintf(out, "ok %ld\n", n);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
