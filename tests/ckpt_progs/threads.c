/* Four threads with thread-local counters, a mutex + condition variable
 * ping-pong, a thread blocked in a futex wait holding a robust mutex, a thread
 * in nanosleep with its own blocked mask, a pending signal and an alternate
 * signal stack, and two POSIX timers (SIGEV_SIGNAL and SIGEV_THREAD_ID).
 * Every 20 ms main appends "tick A B C D T1 T2" (the counters) to argv[1].
 * When the file argv[1].stop exists, everything is wound up and checked, and
 * the results are appended: "joined", "robust EOWNERDEAD", "usr2 t4",
 * "altstack ok", and "sleeper POLICY NICE NAME PDEATHSIG" of the sleeper
 * thread, which set SCHED_BATCH, nice 5, its name and SIGUSR1 itself. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;
static __thread long mine;
static long counts[4];
static volatile long timer1, timer2;
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int turn;
static pthread_mutex_t robust;
static pthread_mutex_t gate_m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate = PTHREAD_COND_INITIALIZER;
static int gate_open;
static volatile pid_t t4_tid, usr2_tid;
static char *alt;
static volatile int alt_ok = -1;
static pthread_t th[4];
static FILE *out;


static void on_usr2(int s) { (void)s; usr2_tid = syscall(SYS_gettid); }
static void on_usr1(int s)
{
    char here;
    (void)s;
    alt_ok = &here >= alt && &here < alt + SIGSTKSZ * 4;
}
static void on_timer1(int s) { (void)s; timer1++; }
static void on_timer2(int s)
{
    (void)s;
    if (syscall(SYS_gettid) == t4_tid)
        timer2++;
}

static void *pingpong(void *arg)
{
    long me = (long)arg;
    if (me == 1) {
        stack_t ss = {.ss_sp = alt, .ss_size = SIGSTKSZ * 4};
        sigaltstack(&ss, NULL);
    }
    while (!stop) {
        pthread_mutex_lock(&m);
        while (turn != me && !stop)
            pthread_cond_wait(&cv, &m);
        mine++;
        counts[me] = mine;
        turn = 1 - me;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&m);
    }
    pthread_mutex_lock(&m);
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&m);
    return NULL;
}

static void *waiter(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&robust);
    pthread_mutex_lock(&gate_m);
    while (!stop) {
        while (!gate_open && !stop)
            pthread_cond_wait(&gate, &gate_m);
        gate_open = 0;
        mine++;
        counts[2] = mine;
    }
    pthread_mutex_unlock(&gate_m);
    return NULL; /* still holding the robust mutex */
}

static void *sleeper(void *arg)
{
    (void)arg;
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    struct sched_param sp = {0};
    sched_setscheduler(0, SCHED_BATCH, &sp);
    setpriority(PRIO_PROCESS, 0, 5);
    prctl(PR_SET_NAME, "sleeper");
    prctl(PR_SET_PDEATHSIG, SIGUSR1);
    t4_tid = syscall(SYS_gettid);
    while (!stop) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
        mine++;
        counts[3] = mine;
    }
    char name[16] = "";
    int pdeath = 0;
    prctl(PR_GET_NAME, name);
    prctl(PR_GET_PDEATHSIG, &pdeath);
    fprintf(out, "sleeper %d %d %s %d\n", sched_getscheduler(0), getpriority(PRIO_PROCESS, 0), name,
            pdeath);
    pthread_sigmask(SIG_UNBLOCK, &s, NULL);
    return NULL;
}

static void timer(int sig, int notify, pid_t tid, long ms)
{
    struct sigevent ev = {0};
    timer_t id;
    ev.sigev_notify = notify;
    ev.sigev_signo = sig;
    ev._sigev_un._tid = tid;
    if (timer_create(CLOCK_MONOTONIC, &ev, &id))
        exit(3);
    struct itimerspec it = {{0, ms * 1000000}, {0, ms * 1000000}};
    timer_settime(id, 0, &it, NULL);
}

int main(int argc, char **argv)
{
    char stopfile[4096];
    if (argc < 2)
        return 2;
    snprintf(stopfile, sizeof stopfile, "%s.stop", argv[1]);
    out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    alt = malloc(SIGSTKSZ * 4);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&robust, &a);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = on_timer1;
    sigaction(SIGRTMIN, &sa, NULL);
    sa.sa_handler = on_timer2;
    sigaction(SIGRTMIN + 1, &sa, NULL);
    pthread_create(&th[0], NULL, pingpong, (void *)0);
    pthread_create(&th[1], NULL, pingpong, (void *)1);
    pthread_create(&th[2], NULL, waiter, NULL);
    pthread_create(&th[3], NULL, sleeper, NULL);
    while (!t4_tid)
        usleep(1000);
    pthread_kill(th[3], SIGUSR2); /* stays pending: blocked in that thread only */
    timer(SIGRTMIN, SIGEV_SIGNAL, 0, 10);
    timer(SIGRTMIN + 1, SIGEV_THREAD_ID, t4_tid, 10);
    while (access(stopfile, F_OK) != 0) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        while (nanosleep(&ts, &ts) && errno == EINTR)
            ;
        pthread_mutex_lock(&gate_m);
        gate_open = 1;
        pthread_cond_signal(&gate);
        pthread_mutex_unlock(&gate_m);
        fprintf(out, "tick %ld %ld %ld %ld %ld %ld\n", counts[0], counts[1], counts[2],
                counts[3], (long)timer1, (long)timer2);
    }
    pthread_kill(th[1], SIGUSR1);
    while (alt_ok < 0)
        usleep(1000);
    stop = 1;
    pthread_mutex_lock(&gate_m);
    pthread_cond_signal(&gate);
    pthread_mutex_unlock(&gate_m);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    fprintf(out, "joined\n");
    int r = pthread_mutex_lock(&robust);
    fprintf(out, "robust %s\n", r == EOWNERDEAD ? "EOWNERDEAD" : strerror(r));
    fprintf(out, "usr2 %s\n", usr2_tid == t4_tid ? "t4" : "elsewhere");
    fprintf(out, "altstack %s\n", alt_ok ? "ok" : "no");
    return 0;
}
