/* Every shape of sessions and process groups setsid(2) and setpgid(2) can
 * build, then appends 1, 2, 3, ... to argv[1] every 20 ms (the root process).
 *   A: a new session; in it a group whose leader ended (A3, its member, is
 *      adopted by the init)
 *   B: a new session whose leader ended (B1 is adopted by the init)
 *   C: a child forked before its parent's setsid (C1 stays in the old session)
 *   D: its own group in the root's session; its child D1 moves back into the
 *      root's group
 *   E: its own group, then ends: E1 is left in an orphaned group
 *   F: a new session and, in it, a second group that a sibling joins
 *   G: a group whose leader G1 ended but is not reaped (a zombie, as the
 *      first command of a pipeline), joined by its sibling G2
 *   H: a child subreaper; its child H1 starts a session, forks H2 and ends
 *      (a daemon's double fork): H2 is adopted by H from a session whose
 *      leader ended
 *   I: I1's child I2 joins the group of I3, forked after it in another branch
 * Processes that stay sleep. Their pids, parents, groups and sessions are
 * compared from outside (/proc) before the checkpoint and after the restart. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void nap(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts))
        ;
}

static void sleep_forever(void)
{
    for (;;)
        pause();
}

/* Forks a child that runs `body`, which never returns. */
static pid_t child(void (*body)(void))
{
    pid_t p = fork();
    if (p == 0) {
        body();
        _exit(0);
    }
    return p;
}

static void a3(void) { sleep_forever(); }
static void a2(void)
{
    setpgid(0, 0);
    child(a3);
    nap(50);
    _exit(0); /* A3 is left in group A2, adopted by the init */
}
static void a1(void)
{
    waitpid(child(a2), NULL, 0);
    sleep_forever();
}
static void a(void)
{
    setsid();
    child(a1);
    sleep_forever();
}

static void b1(void) { sleep_forever(); }
static void b(void)
{
    setsid();
    child(b1);
    nap(50);
    _exit(0);
}

static void c1(void) { sleep_forever(); }
static void c(void)
{
    child(c1);
    setsid();
    sleep_forever();
}

static pid_t root_group;
static void d1_back(void)
{
    setpgid(0, root_group);
    sleep_forever();
}
static void d(void)
{
    setpgid(0, 0);
    child(d1_back);
    sleep_forever();
}

static void e1(void) { sleep_forever(); }
static void e(void)
{
    setpgid(0, 0);
    child(e1);
    nap(50);
    _exit(0);
}

static pid_t f_group;
static void f_lead(void)
{
    setpgid(0, 0);
    sleep_forever();
}
static void f_join(void)
{
    nap(30);
    setpgid(0, f_group);
    sleep_forever();
}
static void f(void)
{
    setsid();
    f_group = child(f_lead);
    child(f_join);
    sleep_forever();
}

static pid_t g_group;
static void g1(void)
{
    setpgid(0, 0);
    nap(30);
    _exit(0);
}
static void g2(void)
{
    nap(10);
    setpgid(0, g_group);
    sleep_forever();
}
static void g(void)
{
    g_group = child(g1);
    child(g2);
    sleep_forever(); /* G1 stays a zombie */
}

static void h2(void) { sleep_forever(); }
static void h1(void)
{
    setsid();
    child(h2);
    nap(30);
    _exit(0);
}
static void h(void)
{
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    waitpid(child(h1), NULL, 0);
    sleep_forever();
}

static int i_pipe[2];
static void i2(void)
{
    pid_t leader;
    if (read(i_pipe[0], &leader, sizeof leader) == sizeof leader)
        setpgid(0, leader);
    sleep_forever();
}
static void i1(void)
{
    child(i2);
    sleep_forever();
}
static void i3(void)
{
    setpgid(0, 0);
    sleep_forever();
}
static void i(void)
{
    if (pipe(i_pipe))
        _exit(1);
    child(i1);
    nap(10);
    pid_t leader = child(i3);
    setpgid(leader, leader); /* before I2 joins, whichever runs first */
    if (write(i_pipe[1], &leader, sizeof leader) != sizeof leader)
        _exit(1);
    sleep_forever();
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    root_group = getpgrp();
    void (*shapes[])(void) = {a, b, c, d, e, f, g, h, i};
    for (unsigned i = 0; i < sizeof shapes / sizeof *shapes; i++)
        child(shapes[i]);
    /* Reap the ones that end (B and E; A2 is the init's). */
    for (long n = 1;; n++) {
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        nap(20);
        fprintf(out, "%ld\n", n);
    }
}
