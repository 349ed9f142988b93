/*
 * docker-xms wake-up latency probe: how late does a periodic thread wake up in this container?
 *
 * Sleeps to absolute deadlines (clock_nanosleep TIMER_ABSTIME on CLOCK_MONOTONIC), so lateness never
 * accumulates, and records how far past each deadline it woke, in microseconds.
 *
 *   probe [-p PRIO] [-i INTERVAL_US] [-n COUNT] [-r] [-u]
 *     -p  SCHED_FIFO priority 1..99; 0 stays at SCHED_OTHER (default 0)
 *     -i  interval in us (default 1000)
 *     -n  number of wake-ups (default 10000)
 *     -r  print each lateness (us) on its own line before the summary
 *     -u  remove the probe's own file once it runs, so that nothing is left behind in the container
 *
 * The last line of output is one JSON object. Exit codes: 0 measured, 2 bad arguments,
 * 3 SCHED_FIFO refused (EPERM: no real-time budget for this cgroup, or no CAP_SYS_NICE), 1 other failures.
 *
 * Built static so that it runs in any container, whatever libc the image has, or none.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define NSEC_PER_SEC 1000000000LL
#define EXIT_REFUSED 3

static long long ts_ns(const struct timespec *t) { return (long long)t->tv_sec * NSEC_PER_SEC + t->tv_nsec; }

static struct timespec ns_ts(long long ns) {
    struct timespec t = {.tv_sec = ns / NSEC_PER_SEC, .tv_nsec = ns % NSEC_PER_SEC};
    return t;
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* Nearest rank, as docker_xms.domain.media.nearest_rank; per mille in integers so that 99.9 % of 1000 is 999. */
static long long nearest_rank(const long long *sorted, long n, long per_mille) {
    long rank = (long)((per_mille * (long long)n + 999) / 1000);
    if (rank < 1) rank = 1;
    return sorted[rank - 1];
}

static long parse_long(const char *text, long lo, long hi, const char *what) {
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || !end || *end || value < lo || value > hi) {
        fprintf(stderr, "probe: %s must be an integer within %ld..%ld, not '%s'\n", what, lo, hi, text);
        exit(2);
    }
    return value;
}

int main(int argc, char **argv) {
    long prio = 0, interval_us = 1000, count = 10000;
    int raw = 0, unlink_self = 0, opt;
    while ((opt = getopt(argc, argv, "p:i:n:ru")) != -1) {
        switch (opt) {
        case 'p': prio = parse_long(optarg, 0, 99, "priority (-p)"); break;
        case 'i': interval_us = parse_long(optarg, 50, 10000000, "interval in us (-i)"); break;
        case 'n': count = parse_long(optarg, 1, 100000000, "count (-n)"); break;
        case 'r': raw = 1; break;
        case 'u': unlink_self = 1; break;
        default:
            fprintf(stderr, "usage: %s [-p PRIO] [-i INTERVAL_US] [-n COUNT] [-r] [-u]\n", argv[0]);
            return 2;
        }
    }
    /* Images need no rm of their own for the clean-up: the running program keeps its inode. */
    if (unlink_self && unlink(argv[0]) != 0)
        fprintf(stderr, "probe: could not remove %s: %s\n", argv[0], strerror(errno));

    long long *samples = malloc(sizeof(long long) * (size_t)count);
    if (!samples) {
        fprintf(stderr, "probe: cannot allocate %ld samples\n", count);
        return 1;
    }
    /* Touch every page now: a page fault in the loop would be measured as scheduling latency. */
    memset(samples, 0, sizeof(long long) * (size_t)count);

    /* Without CAP_IPC_LOCK or a large RLIMIT_MEMLOCK this fails; the measurement is still worth having. */
    int locked = mlockall(MCL_CURRENT | MCL_FUTURE) == 0;
    if (!locked) fprintf(stderr, "probe: mlockall failed (%s); continuing unlocked\n", strerror(errno));

    /* SCHED_OTHER sleepers wake up to 50 us late on purpose (timer slack); that is not scheduling latency,
     * and real-time threads have no slack, so remove it to compare both policies on the same terms. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);

    if (prio > 0) {
        struct sched_param param = {.sched_priority = (int)prio};
        if (sched_setscheduler(0, SCHED_FIFO, &param) != 0) {
            int err = errno;
            if (err == EPERM) {
                fprintf(stderr,
                        "probe: SCHED_FIFO priority %ld refused (EPERM): this cgroup has no real-time budget "
                        "(cpu.rt_runtime_us is 0) or the container lacks CAP_SYS_NICE\n",
                        prio);
                printf("{\"tool\":\"probe\",\"refused\":true,\"requested_policy\":\"SCHED_FIFO\","
                       "\"requested_priority\":%ld,\"errno\":\"EPERM\"}\n",
                       prio);
                return EXIT_REFUSED;
            }
            fprintf(stderr, "probe: sched_setscheduler(SCHED_FIFO, %ld) failed: %s\n", prio, strerror(err));
            return 1;
        }
    }
    int policy = sched_getscheduler(0);
    struct sched_param got;
    sched_getparam(0, &got);
    const char *policy_name = policy == SCHED_FIFO ? "SCHED_FIFO" : policy == SCHED_RR ? "SCHED_RR" : "SCHED_OTHER";

    long long interval_ns = interval_us * 1000LL;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long next = ts_ns(&now) + interval_ns;
    for (long i = 0; i < count; i++) {
        struct timespec deadline = ns_ts(next);
        int rc;
        while ((rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL)) == EINTR) {
        }
        if (rc != 0) {
            fprintf(stderr, "probe: clock_nanosleep failed: %s\n", strerror(rc));
            return 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        samples[i] = ts_ns(&now) - next;
        next += interval_ns;
        /* After a stall longer than the interval, resume on schedule instead of firing a burst of late wake-ups. */
        long long t = ts_ns(&now);
        if (next <= t) next += ((t - next) / interval_ns + 1) * interval_ns;
    }

    if (raw)
        for (long i = 0; i < count; i++) printf("%lld\n", samples[i] / 1000);

    qsort(samples, (size_t)count, sizeof(long long), cmp_ll);
    printf("{\"tool\":\"probe\",\"refused\":false,\"policy\":\"%s\",\"priority\":%d,\"mlocked\":%s,"
           "\"interval_us\":%ld,\"samples\":%ld,\"min_us\":%lld,\"p50_us\":%lld,\"p99_us\":%lld,"
           "\"p999_us\":%lld,\"max_us\":%lld}\n",
           policy_name, got.sched_priority, locked ? "true" : "false", interval_us, count, samples[0] / 1000,
           nearest_rank(samples, count, 500) / 1000, nearest_rank(samples, count, 990) / 1000,
           nearest_rank(samples, count, 999) / 1000, samples[count - 1] / 1000);
    return 0;
}
