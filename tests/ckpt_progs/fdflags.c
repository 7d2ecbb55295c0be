/* Character devices by path and every descriptor's flags: /dev/null (write),
 * /dev/zero and /dev/urandom (read), /dev/full (write: ENOSPC); a file opened
 * O_APPEND | O_NOATIME, one opened O_DIRECT, one close-on-exec and one not; a
 * non-blocking pipe with a 1 MiB buffer. Every 20 ms it checks them all and
 * appends "ok N" to argv[1], or "bad WHAT" once and exits 1. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int flags_are(int fd, int want)
{
    int mask = O_APPEND | O_NOATIME | O_DIRECT | O_NONBLOCK | O_ACCMODE;
    return (fcntl(fd, F_GETFL) & mask) == want;
}

int main(int argc, char **argv)
{
    char path[4096];
    if (argc < 2)
        return 2;
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    int null = open("/dev/null", O_WRONLY);
    int zero = open("/dev/zero", O_RDONLY);
    int rnd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    int full = open("/dev/full", O_WRONLY);
    snprintf(path, sizeof path, "%s.append", argv[1]);
    int app = open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOATIME, 0644);
    snprintf(path, sizeof path, "%s.direct", argv[1]);
    int direct = open(path, O_RDWR | O_CREAT | O_DIRECT, 0644);
    int direct_flag = O_DIRECT;
    if (direct < 0) { /* a filesystem without O_DIRECT */
        direct = open(path, O_RDWR | O_CREAT, 0644);
        direct_flag = 0;
    }
    int p[2];
    if (pipe2(p, O_NONBLOCK) || fcntl(p[1], F_SETPIPE_SZ, 1 << 20) < 0)
        return 3;
    if (null < 0 || zero < 0 || rnd < 0 || full < 0 || app < 0 || direct < 0)
        return 3;
    for (long n = 1;; n++) {
        char buf[64], z[64] = {0};
        const char *bad = NULL;
        if (write(null, "x", 1) != 1)
            bad = "/dev/null";
        else if (read(zero, buf, 64) != 64 || memcmp(buf, z, 64))
            bad = "/dev/zero";
        else if (read(rnd, buf, 64) != 64)
            bad = "/dev/urandom";
        else if (write(full, "x", 1) != -1 || errno != ENOSPC)
            bad = "/dev/full";
        else if (!flags_are(app, O_WRONLY | O_APPEND | O_NOATIME))
            bad = "O_APPEND | O_NOATIME";
        else if (!flags_are(direct, O_RDWR | direct_flag))
            bad = "O_DIRECT";
        else if (!(fcntl(rnd, F_GETFD) & FD_CLOEXEC) || (fcntl(zero, F_GETFD) & FD_CLOEXEC))
            bad = "close-on-exec";
        else if (!flags_are(p[0], O_RDONLY | O_NONBLOCK) || !flags_are(p[1], O_WRONLY | O_NONBLOCK))
            bad = "pipe flags";
        else if (fcntl(p[0], F_GETPIPE_SZ) != 1 << 20)
            bad = "pipe buffer size";
        if (bad) {
            fprintf(out, "bad %s\n", bad);
            return 1;
        }
        fprintf(out, "ok %ld\n", n);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
