/* The rest of a process's state, set up according to argv[2] and then checked
 * by the program itself every 20 ms; it appends "ok N" to argv[1] while all is
 * as it was set, or "bad WHAT" once and exits 1.
 *   advice   mappings with MADV_DONTFORK, MADV_DONTDUMP, MADV_WIPEONFORK,
 *            MADV_HUGEPAGE, MADV_NOHUGEPAGE, mlock, MAP_GROWSDOWN
 *            (checked in /proc/self/smaps and /proc/self/status VmLck)
 *   prctl    dumpable 0, child subreaper, THP disabled, timer slack, name,
 *            securebits, personality
 *   deleted  its executable and its working directory removed (the links in
 *            /proc/self say "(deleted)", the names are the old ones)
 *   mlockall mlockall(MCL_FUTURE): every new mapping is locked, the ones
 *            from before are not
 *   mlockall-onfault  mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT): new
 *            mappings are locked on fault
 *   dumpable2  dumpable 2, from a change of fsuid while fs.suid_dumpable is 2
 *            (the test sets it)
 *   dumpable-not1  dumpable 2 at first, never 1 afterwards
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/securebits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define N_AREAS 7

static const char *codes[N_AREAS] = {"dc", "dd", "wf", "hg", "nh", "lo", "gd"};
static char *areas[N_AREAS];
static char bad[256];

/* Whether the VmFlags of the mapping starting at `a` hold `code`. */
static int has_flag(char *a, const char *code)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0, found = 0;
    unsigned long want = (unsigned long)a;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' '))
            in = s <= want && want < e;
        else if (in && strncmp(line, "VmFlags:", 8) == 0) {
            char pat[8];
            snprintf(pat, sizeof pat, " %s", code);
            found = strstr(line, pat) != NULL;
            break;
        }
    }
    if (f)
        fclose(f);
    return found;
}

static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0)
            v = atol(line + n);
    if (f)
        fclose(f);
    return v;
}

static void setup_advice(void)
{
    int advice[5] = {MADV_DONTFORK, MADV_DONTDUMP, MADV_WIPEONFORK, MADV_HUGEPAGE,
                     MADV_NOHUGEPAGE};
    for (int i = 0; i < N_AREAS; i++) {
        int flags = MAP_PRIVATE | MAP_ANONYMOUS | (i == 6 ? MAP_GROWSDOWN : 0);
        /* Guard pages between the areas keep the kernel from merging them. */
        char *g = mmap(NULL, 3 * 4 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        areas[i] = mmap(g + 4 * PAGE, 4 * PAGE, PROT_READ | PROT_WRITE, flags | MAP_FIXED, -1, 0);
        areas[i][0] = 'a' + i;
        if (i < 5)
            madvise(areas[i], 4 * PAGE, advice[i]);
    }
    if (mlock(areas[5], 4 * PAGE))
        exit(3);
}

static int check_advice(void)
{
    for (int i = 0; i < N_AREAS; i++) {
        if (!has_flag(areas[i], codes[i])) {
            snprintf(bad, sizeof bad, "area %d lost %s", i, codes[i]);
            return 0;
        }
        if (areas[i][0] != 'a' + i) {
            snprintf(bad, sizeof bad, "area %d lost its content", i);
            return 0;
        }
    }
    /* Only the advised areas carry the flags (area 0 has no "dd"). */
    if (has_flag(areas[0], "dd") || has_flag(areas[1], "lo")) {
        snprintf(bad, sizeof bad, "advice spread to other areas");
        return 0;
    }
    if (status_kb("VmLck:") != 16) {
        snprintf(bad, sizeof bad, "VmLck %ld kB, not 16", status_kb("VmLck:"));
        return 0;
    }
    return 1;
}

#define SECBITS (SECBIT_NOROOT | SECBIT_NO_SETUID_FIXUP)

static void setup_prctl(void)
{
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) || prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) ||
        prctl(PR_SET_TIMERSLACK, 123456) || prctl(PR_SET_NAME, "pstate-main") ||
        prctl(PR_SET_SECUREBITS, SECBITS) || prctl(PR_SET_DUMPABLE, 0) ||
        personality(PER_LINUX | ADDR_NO_RANDOMIZE | UNAME26) == -1)
        exit(3);
}

static int check_prctl(void)
{
    int sub = 0;
    char name[32] = "";
    prctl(PR_GET_CHILD_SUBREAPER, &sub);
    prctl(PR_GET_NAME, name);
#define CHECK(cond, what)                                                                         \
    if (!(cond)) {                                                                                \
        snprintf(bad, sizeof bad, "%s", what);                                                    \
        return 0;                                                                                 \
    }
    CHECK(sub == 1, "child subreaper");
    CHECK(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1, "THP disable");
    CHECK(prctl(PR_GET_TIMERSLACK) == 123456, "timer slack");
    CHECK(strcmp(name, "pstate-main") == 0, "name");
    CHECK(prctl(PR_GET_SECUREBITS) == SECBITS, "securebits");
    CHECK(prctl(PR_GET_DUMPABLE) == 0, "dumpable");
    CHECK(personality(0xffffffff) == (PER_LINUX | ADDR_NO_RANDOMIZE | UNAME26), "personality");
    return 1;
}

static char *before_mlockall, *taken_after, *guard_after;
static int future_flags;

static void setup_mlockall(int flags)
{
    before_mlockall = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    before_mlockall[0] = 1;
    future_flags = flags;
    if (mlockall(flags))
        exit(3);
    /* Memory it takes afterwards is locked (a large malloc is a mapping),
     * and so is a mapping without access (a thread stack's guard page). */
    taken_after = malloc(1 << 20);
    taken_after[0] = 1;
    guard_after = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

static int check_mlockall(void)
{
    char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int locked = has_flag(p, "lo"), onfault = has_flag(p, "lf");
    munmap(p, PAGE);
    CHECK(locked, "a new mapping is not locked");
    CHECK(has_flag(taken_after, "lo"), "memory taken after mlockall is not locked");
    CHECK(has_flag(guard_after, "lo"), "a mapping without access is not locked");
    CHECK(onfault == !!(future_flags & MCL_ONFAULT), "lock on fault");
    CHECK(has_flag(before_mlockall, "lo") == !!(future_flags & MCL_CURRENT),
          "a mapping from before mlockall");
    return 1;
}

static int want_dumpable;

static void setup_dumpable2(int want)
{
    /* Changing fsuid gives the process fs.suid_dumpable's value. */
    setfsuid(1);
    setfsuid(0);
    if (prctl(PR_GET_DUMPABLE) != 2)
        exit(4);
    want_dumpable = want;
}

static int check_dumpable(void)
{
    int d = prctl(PR_GET_DUMPABLE);
    if (want_dumpable == 2)
        CHECK(d == 2, "dumpable is not 2");
    CHECK(d != 1, "dumpable 2 became 1");
    return 1;
}

static char exe_was[4096], cwd_was[4096];

static void setup_deleted(const char *out)
{
    char dir[4096];
    if (readlink("/proc/self/exe", exe_was, sizeof exe_was - 1) < 0 || unlink(exe_was))
        exit(3);
    snprintf(dir, sizeof dir, "%s.cwd", out);
    if (mkdir(dir, 0755) || chdir(dir) || rmdir(dir))
        exit(3);
    snprintf(cwd_was, sizeof cwd_was, "%s", dir);
}

static int check_link(const char *link, const char *was)
{
    char now[4096], want[4200];
    ssize_t n = readlink(link, now, sizeof now - 1);
    if (n < 0)
        return 0;
    now[n] = 0;
    snprintf(want, sizeof want, "%s (deleted)", was);
    if (strcmp(now, want) == 0)
        return 1;
    snprintf(bad, sizeof bad, "%s is '%s', not '%s'", link, now, want);
    return 0;
}

static int check_deleted(void)
{
    struct stat st;
    /* The executable still runs from the same (unlinked) file. */
    if (stat("/proc/self/exe", &st) || st.st_nlink != 0) {
        snprintf(bad, sizeof bad, "the executable has a name again");
        return 0;
    }
    if (access(exe_was, F_OK) == 0) {
        snprintf(bad, sizeof bad, "%s exists again", exe_was);
        return 0;
    }
    /* The names are compared without the directory made anew at restart, whose
     * name is the old one (or, if taken, that name with a suffix). */
    char now[4096];
    ssize_t n = readlink("/proc/self/cwd", now, sizeof now - 1);
    if (n < 0 || (now[n] = 0, strncmp(now, cwd_was, strlen(cwd_was)) != 0) ||
        !strstr(now, " (deleted)") || stat(".", &st) || st.st_nlink != 0) {
        snprintf(bad, sizeof bad, "working directory is '%s'", n < 0 ? "?" : now);
        return 0;
    }
    return check_link("/proc/self/exe", exe_was);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    FILE *out = fopen(argv[1], "a");
    if (!out)
        return 2;
    setvbuf(out, NULL, _IOLBF, 0);
    int (*check)(void);
    if (strcmp(argv[2], "advice") == 0) {
        setup_advice();
        check = check_advice;
    } else if (strcmp(argv[2], "prctl") == 0) {
        setup_prctl();
        check = check_prctl;
    } else if (strcmp(argv[2], "mlockall") == 0) {
        setup_mlockall(MCL_FUTURE);
        check = check_mlockall;
    } else if (strcmp(argv[2], "mlockall-onfault") == 0) {
        setup_mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT);
        check = check_mlockall;
    } else if (strcmp(argv[2], "dumpable2") == 0) {
        setup_dumpable2(2);
        check = check_dumpable;
    } else if (strcmp(argv[2], "dumpable-not1") == 0) {
        setup_dumpable2(0);
        check = check_dumpable;
    } else if (strcmp(argv[2], "deleted") == 0) {
        setup_deleted(argv[1]);
        check = check_deleted;
    } else {
        return 2;
    }
    for (long n = 1;; n++) {
        if (!check()) {
            fprintf(out, "bad %s\n", bad);
            return 1;
        }
        fprintf(out, "ok %ld\n", n);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
