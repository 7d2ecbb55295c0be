/* Watches directory argv[1].d for new files (its second watch: the first one,
 * on argv[1].e, is removed again, so the watch descriptor is 2) and appends
 * "create NAME WD" to argv[1] for each, "ready" once set up. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char d[4096], e[4096];
    if (argc < 2)
        return 2;
    snprintf(d, sizeof d, "%s.d", argv[1]);
    snprintf(e, sizeof e, "%s.e", argv[1]);
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    int fd = inotify_init1(0);
    int first = inotify_add_watch(fd, e, IN_CREATE);
    int wd = inotify_add_watch(fd, d, IN_CREATE);
    inotify_rm_watch(fd, first);
    fprintf(out, "ready %d\n", wd);
    char buf[4096] __attribute__((aligned(8)));
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        for (char *p = buf; n > 0 && p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (ev->mask & IN_CREATE)
                fprintf(out, "create %s %d\n", ev->name, ev->wd);
            p += sizeof *ev + ev->len;
        }
    }
}
