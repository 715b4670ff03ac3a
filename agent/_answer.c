/* The gate's answer loop for everyone who is not a technician: agent._answer.
 *
 * One call, `Answerer.answer(timeout_ms)`, waits for the permission group (poll), reads
 * every queued event, and for each one decides in C, without the GIL, whether the opener
 * may simply go: an agent thread or exempt process, a thread that is gone, or anyone whose
 * uid and loginuid name neither a technician nor an interactive root the agreement does not
 * know. Those are answered FAN_ALLOW in batches written with one writev and their event fds
 * closed. The rest (a technician, an unknown interactive root) are returned to Python, fds
 * open, for the policy (agent.gate), with what the decision needs read here too, still
 * without the GIL: the file's path (readlinkat on a kept /proc/self/fd) and, for an open
 * that is not an exec or a directory, the open flags, parsed from the opener's
 * /proc/TID/syscall line once the opener has gone to sleep (a bounded number of yields;
 * FLAGS_UNREAD when it is still running, or the flags are behind a pointer (openat2), and
 * Python reads them itself). From the flags and the mask comes the kind of access (read,
 * write, exec, list; 0 when only a stat can tell, as for O_CREAT).
 *
 * A decision Python has made can be remembered (`remember`): an allow for one uid,
 * loginuid, access and path, valid over a span of CLOCK_REALTIME within one generation
 * (`forget` starts a new one: a new agreement, new grants). A technician event that finds
 * its allow remembered is answered here, in the same call, and returned to Python with the
 * decision so it is still recorded; a deny is never answered here (it waits for the journal).
 *
 * The opener's uid and loginuid come from kept /proc handles, so an event costs one pread
 * and one fstat: a /proc/TID handle refers to the kernel's struct pid, so once that task has
 * exited a read through it fails (ESRCH) and the handles are opened again; a read that
 * succeeds proves the handle's task is alive, and live tasks have distinct ids. The handles
 * live in a direct-mapped table indexed by tid (a colliding thread replaces the older one),
 * so the number of fds this holds is bounded (three per slot).
 *
 * Thread use: `answer`, `syscall_fd` and `remember` are called by the gate's answer thread
 * only (so the remembered entries change only while no batch runs); `set_identities`,
 * `set_own` and `forget` from any thread (a mutex guards the uid lists and the generation;
 * the batch holds it while it classifies). Counters are written by the answer thread only.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef __linux__
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define READ_BYTES (256 * 1024) /* one read takes every queued event (~10k of 24 bytes) */
#define BATCH 256               /* allow responses per writev (under IOV_MAX) */
/* Room for every event one read can bring, so a technician's event is never let through
 * undecided for want of a slot. */
#define MAX_SLOW (READ_BYTES / sizeof(struct fanotify_event_metadata))
#define MAX_IDS 4096            /* technician / principal uids, exempt ids */
#define EXACT_US 1024           /* latency histogram: µs below this, powers of two above */
#define BUCKETS (EXACT_US + 64)
#define UNSET_LOGINUID 4294967295u
#define ARENA (512 * 1024) /* paths of one call's technician events */
#define PATH_BYTES 4096
#define SYSCALL_BYTES 256
#define SYSCALL_YIELDS 200 /* agent.attribute.SYSCALL_RETRIES */
#define MEMO_SLOTS 1024    /* remembered allows (direct-mapped by a hash of the key) */

/* The flags field of a technician event when it holds no open flags. */
#define FLAGS_UNKNOWN (-1) /* a syscall this code does not know: Python counts it a write */
#define FLAGS_EXEC (-2)
#define FLAGS_UNREAD (-3) /* not read here: an exec or directory event, a thread still
                             running after the yields, openat2, or no handle */
/* The kind of access (agent.gate maps them to policies.model.Action). */
enum { ACCESS_STAT = 0, ACCESS_READ, ACCESS_WRITE, ACCESS_EXEC, ACCESS_LIST };
enum { KIND_TECHNICIAN = 1, KIND_ADMIN = 2 };

#if defined(__x86_64__)
/* syscall number -> index of the flags argument; -1 creat; -2 openat2 (struct open_how) */
static const struct {
    long nr;
    int arg;
} OPENS[] = {{2, 1}, {85, -1}, {257, 2}, {304, 2}, {437, -2}};
static const long EXECS[] = {59, 322};
#elif defined(__aarch64__)
static const struct {
    long nr;
    int arg;
} OPENS[] = {{56, 2}, {265, 2}, {437, -2}};
static const long EXECS[] = {221, 281};
#else
static const struct {
    long nr;
    int arg;
} OPENS[] = {{-1000, 0}};
static const long EXECS[] = {-1000};
#endif

typedef struct {
    int tid; /* 0: empty */
    int dir_fd;
    int loginuid_fd;
    int syscall_fd; /* -1 until a technician event needs it */
    int own;        /* 1 when the thread is one of this process's */
} Task;

typedef struct {
    uint32_t mask;
    int fd;
    int pid;
    int uid;
    uint32_t loginuid;
    int path_off, path_len; /* in the arena; path_len -1: not read */
    long long flags;        /* open flags, or FLAGS_* */
    int access;             /* ACCESS_* */
    int kind;               /* KIND_* */
    PyObject *decision;     /* borrowed from the memo: answered here (allowed); else NULL */
} Slow;

typedef struct {
    uint64_t hash; /* 0: empty */
    int uid;
    uint32_t loginuid;
    int access;
    unsigned long long gen;
    long long from_ns, until_ns; /* CLOCK_REALTIME span the decision holds for */
    char *path;
    size_t path_len;
    PyObject *decision; /* owned */
} Memo;

typedef struct {
    PyObject_HEAD
    int fd;
    int closed;
    unsigned slots; /* power of two */
    Task *tasks;
    char *buf;
    char *arena;
    int fd_dir; /* /proc/self/fd */
    pthread_mutex_t lock;
    int mutex_ready;
    uint32_t *techs;
    size_t n_techs;
    uint32_t *principals;
    size_t n_principals;
    int32_t *own;
    size_t n_own;
    char self_tasks[64];
    Slow slow[MAX_SLOW];
    size_t n_slow;
    Memo *memo;
    unsigned long long gen; /* the current generation (guarded by lock) */
    /* counters, since start */
    unsigned long long events, allowed, exempt, errors, opened, recalled;
    unsigned long long hist[BUCKETS];
} Answerer;

static unsigned long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static long long real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000ll + (long long)ts.tv_nsec;
}

static unsigned bucket(unsigned long long ns) {
    unsigned long long us = ns / 1000;
    if (us < EXACT_US) return (unsigned)us;
    unsigned bits = 0;
    while (us) {
        bits++;
        us >>= 1;
    }
    unsigned b = EXACT_US + bits;
    return b < BUCKETS ? b : BUCKETS - 1;
}

static int contains_u32(const uint32_t *xs, size_t n, uint32_t x) {
    for (size_t i = 0; i < n; i++)
        if (xs[i] == x) return 1;
    return 0;
}

/* ---- the task table ------------------------------------------------------------------ */

static void task_close(Task *t) {
    if (!t->tid) return;
    close(t->dir_fd);
    close(t->loginuid_fd);
    if (t->syscall_fd >= 0) close(t->syscall_fd);
    t->tid = 0;
}

static void table_clear(Answerer *a) {
    for (unsigned i = 0; i < a->slots; i++) task_close(&a->tasks[i]);
}

static Task *table_slot(Answerer *a, int tid) { return &a->tasks[(unsigned)tid & (a->slots - 1)]; }

static int open_task(Answerer *a, Task *t, int tid) {
    char path[32];
    snprintf(path, sizeof path, "/proc/%d", tid);
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return -1;
    int lfd = openat(dfd, "loginuid", O_RDONLY | O_CLOEXEC);
    if (lfd < 0) {
        int e = errno;
        close(dfd);
        errno = e;
        return -1;
    }
    char own[96];
    snprintf(own, sizeof own, "%s%d", a->self_tasks, tid);
    t->tid = tid;
    t->dir_fd = dfd;
    t->loginuid_fd = lfd;
    t->syscall_fd = -1;
    t->own = access(own, F_OK) == 0;
    a->opened++;
    return 0;
}

/* The entry of `tid` with its loginuid read into `raw`; NULL when the thread is gone.
 * Out of fds, the whole table is closed and the open tried once more: a full table must
 * never read as "that thread is gone". */
static Task *task_for(Answerer *a, int tid, char *raw, ssize_t *n) {
    Task *t = table_slot(a, tid);
    if (t->tid == tid) {
        *n = pread(t->loginuid_fd, raw, 15, 0);
        if (*n >= 0) return t;
    }
    task_close(t);
    if (open_task(a, t, tid) < 0) {
        if (errno != EMFILE && errno != ENFILE) return NULL;
        table_clear(a);
        if (open_task(a, t, tid) < 0) return NULL;
    }
    *n = pread(t->loginuid_fd, raw, 15, 0);
    if (*n < 0) {
        task_close(t);
        return NULL;
    }
    return t;
}

/* ---- answering ----------------------------------------------------------------------- */

/* Write the allow responses (one per iovec: fanotify takes one response per write). A
 * refused response (its opener was killed meanwhile) stops the kernel there, so the rest
 * go one by one. `flush` closes their event fds too. */
static void respond(Answerer *a, struct fanotify_response *resp, struct iovec *iov, int n,
                    unsigned long long t0) {
    if (!n) return;
    ssize_t w = writev(a->fd, iov, n);
    int done = w > 0 ? (int)(w / (ssize_t)sizeof *resp) : 0;
    for (int i = done; i < n; i++)
        if (write(a->fd, &resp[i], sizeof *resp) != (ssize_t)sizeof *resp) a->errors++;
    a->hist[bucket(now_ns() - t0)] += (unsigned long long)n;
}

static void flush(Answerer *a, struct fanotify_response *resp, struct iovec *iov, int n,
                  unsigned long long t0) {
    respond(a, resp, iov, n, t0);
    for (int i = 0; i < n; i++) close(resp[i].fd);
}

/* The open flags in a /proc/TID/syscall line ("NR ARG0 ... ARG5 SP PC", hex arguments),
 * as agent.attribute.open_flags reads them; FLAGS_UNREAD for "running" and openat2. */
static long long syscall_flags(const char *line, ssize_t n) {
    char buf[SYSCALL_BYTES + 1];
    if (n <= 0) return FLAGS_UNREAD;
    if (n > SYSCALL_BYTES) n = SYSCALL_BYTES;
    memcpy(buf, line, (size_t)n);
    buf[n] = 0;
    if (strncmp(buf, "running", 7) == 0) return FLAGS_UNREAD;
    char *end = NULL;
    errno = 0;
    long nr = strtol(buf, &end, 10);
    if (errno || end == buf) return FLAGS_UNKNOWN;
    for (size_t i = 0; i < sizeof EXECS / sizeof EXECS[0]; i++)
        if (EXECS[i] == nr) return FLAGS_EXEC;
    int arg = -3;
    for (size_t i = 0; i < sizeof OPENS / sizeof OPENS[0]; i++)
        if (OPENS[i].nr == nr) arg = OPENS[i].arg;
    if (arg == -3) return FLAGS_UNKNOWN;
    if (arg == -1) return O_CREAT | O_WRONLY | O_TRUNC; /* creat(2) */
    if (arg == -2) return FLAGS_UNREAD;                 /* openat2: Python reads open_how */
    char *p = end;
    unsigned long long v = 0;
    for (int i = 0; i <= arg; i++) {
        while (*p == ' ') p++;
        if (*p == 0 || *p == '\n') return FLAGS_UNKNOWN;
        errno = 0;
        v = strtoull(p, &end, 16);
        if (errno || end == p) return FLAGS_UNKNOWN;
        p = end;
    }
    return (long long)(v & 0xFFFFFFFFull);
}

/* The kind of access agent.attribute.classify_open finds, where no stat is needed (an
 * unknown syscall is a write, unless it opened a directory: Python stats it). */
static int access_of(uint32_t mask, long long flags) {
    if (mask & FAN_OPEN_EXEC_PERM || flags == FLAGS_EXEC) return ACCESS_EXEC;
    if (mask & FAN_ONDIR) return ACCESS_LIST;
    if (flags < 0 || flags & (O_CREAT | O_DIRECTORY)) return ACCESS_STAT;
    if (flags & (O_ACCMODE | O_TRUNC | O_APPEND)) return ACCESS_WRITE;
    return ACCESS_READ;
}

/* Read what the decision on a technician event needs: its path and open flags. */
static void prepare(Answerer *a, Slow *s, int *used) {
    s->path_len = -1;
    s->flags = FLAGS_UNREAD;
    s->decision = NULL;
    if (ARENA - *used >= PATH_BYTES && a->fd_dir >= 0) {
        char name[16];
        snprintf(name, sizeof name, "%d", s->fd);
        ssize_t n = readlinkat(a->fd_dir, name, a->arena + *used, PATH_BYTES);
        if (n > 0 && n < PATH_BYTES) {
            s->path_off = *used;
            s->path_len = (int)n;
            *used += (int)n;
        }
    }
    s->access = access_of(s->mask, s->flags);
    if (s->mask & (FAN_OPEN_EXEC_PERM | FAN_ONDIR)) return;
    Task *t = table_slot(a, s->pid);
    if (t->tid != s->pid) return;
    if (t->syscall_fd < 0) t->syscall_fd = openat(t->dir_fd, "syscall", O_RDONLY | O_CLOEXEC);
    if (t->syscall_fd < 0) return;
    char line[SYSCALL_BYTES];
    ssize_t n = -1;
    for (int i = 0; i <= SYSCALL_YIELDS; i++) {
        n = pread(t->syscall_fd, line, SYSCALL_BYTES, 0);
        if (n < 7 || memcmp(line, "running", 7) != 0) break;
        sched_yield();
    }
    s->flags = syscall_flags(line, n);
    s->access = access_of(s->mask, s->flags);
}

/* ---- remembered allows ----------------------------------------------------------------- */

static uint64_t memo_hash(int uid, uint32_t loginuid, int access, const char *path, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)path[i]) * 1099511628211ull;
    h = (h ^ (uint32_t)uid) * 1099511628211ull;
    h = (h ^ loginuid) * 1099511628211ull;
    h = (h ^ (unsigned)access) * 1099511628211ull;
    return h ? h : 1;
}

/* The remembered allow for `s`, valid now in generation `gen`, or NULL. */
static PyObject *memo_find(Answerer *a, const Slow *s, unsigned long long gen, long long now) {
    if (s->access == ACCESS_STAT || s->path_len <= 0) return NULL;
    const char *path = a->arena + s->path_off;
    size_t n = (size_t)s->path_len;
    uint64_t h = memo_hash(s->uid, s->loginuid, s->access, path, n);
    const Memo *m = &a->memo[h & (MEMO_SLOTS - 1)];
    if (m->hash != h || m->gen != gen || m->uid != s->uid || m->loginuid != s->loginuid ||
        m->access != s->access || m->path_len != n || now < m->from_ns || now >= m->until_ns ||
        memcmp(m->path, path, n) != 0)
        return NULL;
    return m->decision;
}

static void memo_clear(Answerer *a) {
    if (!a->memo) return;
    for (size_t i = 0; i < MEMO_SLOTS; i++) {
        Memo *m = &a->memo[i];
        PyMem_RawFree(m->path);
        Py_CLEAR(m->decision);
        memset(m, 0, sizeof *m);
    }
}

/* One batch: read, classify, answer the fast path, keep the slow ones in a->slow.
 * Returns the bytes read (0: the group is gone), or -1 with errno (EAGAIN: nothing). */
static ssize_t answer_batch(Answerer *a, int timeout_ms, unsigned long long *t0_out) {
    /* Read first, poll only when nothing is queued: an opener answered a moment ago often
     * has its next event queued already (it ran as soon as it was woken). */
    ssize_t size = read(a->fd, a->buf, READ_BYTES);
    if (size < 0 && errno == EAGAIN) {
        struct pollfd p = {.fd = a->fd, .events = POLLIN};
        int r = poll(&p, 1, timeout_ms);
        if (r <= 0) {
            if (r == 0) errno = EAGAIN;
            return -1;
        }
        size = read(a->fd, a->buf, READ_BYTES);
    }
    unsigned long long t0 = now_ns();
    *t0_out = t0;
    if (size <= 0) return size;
    struct fanotify_response resp[BATCH];
    struct iovec iov[BATCH];
    int n = 0;
    a->n_slow = 0;
    pthread_mutex_lock(&a->lock);
    ssize_t off = 0;
    while (off + (ssize_t)sizeof(struct fanotify_event_metadata) <= size) {
        struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)(a->buf + off);
        off += m->event_len > sizeof *m ? m->event_len : sizeof *m;
        if (m->fd < 0) continue; /* a queue overflow notice: impossible with an unlimited queue */
        a->events++;
        int pid = m->pid;
        int exempt = 0;
        for (size_t i = 0; i < a->n_own; i++)
            if (a->own[i] == pid) exempt = 1;
        if (!exempt) {
            char raw[16];
            ssize_t got = 0;
            Task *t = task_for(a, pid, raw, &got);
            if (t == NULL) goto allow_counted; /* gone (killed while waiting) */
            if (t->own) {
                exempt = 1;
            } else {
                raw[got] = 0;
                char *end = NULL;
                errno = 0;
                unsigned long lu = strtoul(raw, &end, 10);
                uint32_t loginuid = (errno || end == raw) ? UNSET_LOGINUID : (uint32_t)lu;
                struct stat st;
                int uid = fstat(t->dir_fd, &st) == 0 ? (int)st.st_uid : -1;
                if (uid < 0) loginuid = UNSET_LOGINUID;
                int has_login = loginuid != UNSET_LOGINUID;
                int technician = (has_login && contains_u32(a->techs, a->n_techs, loginuid)) ||
                                 (uid > 0 && contains_u32(a->techs, a->n_techs, (uint32_t)uid));
                int admin = uid == 0 && has_login &&
                            !contains_u32(a->principals, a->n_principals, loginuid);
                if (technician || admin) {
                    Slow *s = &a->slow[a->n_slow++];
                    s->mask = (uint32_t)m->mask;
                    s->fd = m->fd;
                    s->pid = pid;
                    s->uid = uid;
                    s->loginuid = loginuid;
                    s->kind = technician ? KIND_TECHNICIAN : KIND_ADMIN;
                    continue;
                }
            }
        }
        if (exempt) a->exempt++;
    allow_counted:
        if (!exempt) a->allowed++;
        resp[n].fd = m->fd;
        resp[n].response = FAN_ALLOW;
        iov[n].iov_base = &resp[n];
        iov[n].iov_len = sizeof resp[n];
        if (++n == BATCH) {
            flush(a, resp, iov, n, t0);
            n = 0;
        }
    }
    unsigned long long gen = a->gen;
    pthread_mutex_unlock(&a->lock);
    flush(a, resp, iov, n, t0);
    int used = 0;
    for (size_t i = 0; i < a->n_slow; i++) prepare(a, &a->slow[i], &used);
    /* Technicians whose allow is remembered: answered now (their fds stay open: Python
     * records them, then closes them). */
    long long now = a->n_slow ? real_ns() : 0;
    n = 0;
    for (size_t i = 0; i < a->n_slow; i++) {
        Slow *s = &a->slow[i];
        if (s->kind != KIND_TECHNICIAN || (s->decision = memo_find(a, s, gen, now)) == NULL)
            continue;
        resp[n].fd = s->fd;
        resp[n].response = FAN_ALLOW;
        iov[n].iov_base = &resp[n];
        iov[n].iov_len = sizeof resp[n];
        if (++n == BATCH) {
            respond(a, resp, iov, n, t0);
            n = 0;
        }
        a->recalled++;
    }
    respond(a, resp, iov, n, t0);
    return size;
}

/* ---- the Python type ----------------------------------------------------------------- */

static int Answerer_init(Answerer *a, PyObject *args, PyObject *kw) {
    static char *names[] = {"fd", "slots", NULL};
    int fd;
    unsigned slots = 1024;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|I", names, &fd, &slots)) return -1;
    if (slots == 0 || (slots & (slots - 1))) {
        PyErr_SetString(PyExc_ValueError, "slots must be a power of two");
        return -1;
    }
    if (a->tasks) {
        PyErr_SetString(PyExc_RuntimeError, "Answerer initialised twice");
        return -1;
    }
    pthread_mutex_init(&a->lock, NULL);
    a->mutex_ready = 1;
    a->fd = fd;
    a->slots = slots;
    a->tasks = PyMem_Calloc(slots, sizeof(Task));
    a->buf = PyMem_Malloc(READ_BYTES);
    a->arena = PyMem_Malloc(ARENA);
    a->fd_dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    a->techs = PyMem_Calloc(MAX_IDS, sizeof(uint32_t));
    a->principals = PyMem_Calloc(MAX_IDS, sizeof(uint32_t));
    a->own = PyMem_Calloc(MAX_IDS, sizeof(int32_t));
    a->memo = PyMem_Calloc(MEMO_SLOTS, sizeof(Memo));
    if (!a->tasks || !a->buf || !a->arena || !a->techs || !a->principals || !a->own ||
        !a->memo) {
        PyErr_NoMemory();
        return -1;
    }
    snprintf(a->self_tasks, sizeof a->self_tasks, "/proc/%d/task/", (int)getpid());
    return 0;
}

static void Answerer_dealloc(Answerer *a) {
    if (a->tasks) {
        table_clear(a);
        PyMem_Free(a->tasks);
    }
    PyMem_Free(a->buf);
    PyMem_Free(a->arena);
    if (a->fd_dir >= 0) close(a->fd_dir);
    PyMem_Free(a->techs);
    PyMem_Free(a->principals);
    PyMem_Free(a->own);
    memo_clear(a);
    PyMem_Free(a->memo);
    if (a->mutex_ready) pthread_mutex_destroy(&a->lock);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

/* Copy an iterable of ints into `out` (at most MAX_IDS); -1 with an exception set. */
static Py_ssize_t read_ids(PyObject *iterable, uint32_t *out) {
    PyObject *seq = PySequence_Fast(iterable, "expected an iterable of ids");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_IDS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d ids (got %zd)", MAX_IDS, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        out[i] = (uint32_t)v;
    }
    Py_DECREF(seq);
    return n;
}

static PyObject *Answerer_set_identities(Answerer *a, PyObject *args) {
    PyObject *techs, *principals;
    if (!PyArg_ParseTuple(args, "OO", &techs, &principals)) return NULL;
    uint32_t t[MAX_IDS], p[MAX_IDS];
    Py_ssize_t nt = read_ids(techs, t), np;
    if (nt < 0 || (np = read_ids(principals, p)) < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&a->lock);
    memcpy(a->techs, t, (size_t)nt * sizeof *t);
    a->n_techs = (size_t)nt;
    memcpy(a->principals, p, (size_t)np * sizeof *p);
    a->n_principals = (size_t)np;
    pthread_mutex_unlock(&a->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Answerer_set_own(Answerer *a, PyObject *ids) {
    uint32_t o[MAX_IDS];
    Py_ssize_t n = read_ids(ids, o);
    if (n < 0) return NULL;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&a->lock);
    memcpy(a->own, o, (size_t)n * sizeof *o);
    a->n_own = (size_t)n;
    pthread_mutex_unlock(&a->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Answerer_answer(Answerer *a, PyObject *arg) {
    int timeout_ms = (int)PyLong_AsLong(arg);
    if (timeout_ms == -1 && PyErr_Occurred()) return NULL;
    if (a->closed) {
        PyErr_SetString(PyExc_ValueError, "answerer closed");
        return NULL;
    }
    ssize_t size;
    unsigned long long t0 = 0;
    int err;
    Py_BEGIN_ALLOW_THREADS
    size = answer_batch(a, timeout_ms, &t0);
    err = errno;
    Py_END_ALLOW_THREADS
    if (size == 0) Py_RETURN_NONE;
    if (size < 0) {
        if (err == EAGAIN || err == EINTR) return Py_BuildValue("(K[])", t0);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *slow = PyList_New((Py_ssize_t)a->n_slow);
    if (!slow) return NULL;
    for (size_t i = 0; i < a->n_slow; i++) {
        Slow *s = &a->slow[i];
        PyObject *login = s->loginuid == UNSET_LOGINUID ? Py_NewRef(Py_None)
                                                         : PyLong_FromUnsignedLong(s->loginuid);
        PyObject *path = s->path_len < 0 ? Py_NewRef(Py_None)
                                          : PyUnicode_DecodeFSDefaultAndSize(
                                                a->arena + s->path_off, s->path_len);
        PyObject *item = NULL;
        if (login && path) { /* "N" hands both over, even when it fails */
            item = Py_BuildValue("(IiiiNNLiiO)", s->mask, s->fd, s->pid, s->uid, login, path,
                                 s->flags, s->access, s->kind,
                                 s->decision ? s->decision : Py_None);
        } else {
            Py_XDECREF(login);
            Py_XDECREF(path);
        }
        if (!item) {
            Py_DECREF(slow);
            return NULL;
        }
        PyList_SET_ITEM(slow, (Py_ssize_t)i, item);
    }
    return Py_BuildValue("(KN)", t0, slow);
}

static PyObject *Answerer_remember(Answerer *a, PyObject *args) {
    int uid, access;
    unsigned int loginuid;
    PyObject *path, *decision;
    unsigned long long gen;
    long long from_ns, until_ns;
    if (!PyArg_ParseTuple(args, "iIiUKLLO", &uid, &loginuid, &access, &path, &gen, &from_ns,
                          &until_ns, &decision))
        return NULL;
    if (access <= ACCESS_STAT || access > ACCESS_LIST) {
        PyErr_Format(PyExc_ValueError, "access %d cannot be remembered", access);
        return NULL;
    }
    PyObject *raw = PyUnicode_EncodeFSDefault(path);
    if (!raw) return NULL;
    size_t n = (size_t)PyBytes_GET_SIZE(raw);
    char *copy = PyMem_RawMalloc(n ? n : 1);
    if (!copy) {
        Py_DECREF(raw);
        return PyErr_NoMemory();
    }
    memcpy(copy, PyBytes_AS_STRING(raw), n);
    Py_DECREF(raw);
    uint64_t h = memo_hash(uid, (uint32_t)loginuid, access, copy, n);
    Memo *m = &a->memo[h & (MEMO_SLOTS - 1)];
    PyMem_RawFree(m->path);
    Py_XSETREF(m->decision, Py_NewRef(decision));
    m->hash = h;
    m->uid = uid;
    m->loginuid = (uint32_t)loginuid;
    m->access = access;
    m->gen = gen;
    m->from_ns = from_ns;
    m->until_ns = until_ns;
    m->path = copy;
    m->path_len = n;
    Py_RETURN_NONE;
}

static PyObject *Answerer_forget(Answerer *a, PyObject *arg) {
    unsigned long long gen = PyLong_AsUnsignedLongLong(arg);
    if (gen == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&a->lock);
    a->gen = gen;
    pthread_mutex_unlock(&a->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Answerer_recalled(Answerer *a, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromUnsignedLongLong(a->recalled);
}

static PyObject *Answerer_syscall_fd(Answerer *a, PyObject *arg) {
    long tid = PyLong_AsLong(arg);
    if (tid == -1 && PyErr_Occurred()) return NULL;
    Task *t = table_slot(a, (int)tid);
    if (t->tid != (int)tid) return PyLong_FromLong(-1);
    if (t->syscall_fd < 0) t->syscall_fd = openat(t->dir_fd, "syscall", O_RDONLY | O_CLOEXEC);
    return PyLong_FromLong(t->syscall_fd);
}

static PyObject *Answerer_counters(Answerer *a, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(KKKKK)", a->events, a->allowed, a->exempt, a->errors, a->opened);
}

static PyObject *Answerer_histogram(Answerer *a, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(BUCKETS);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < BUCKETS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(a->hist[i]);
        if (!v) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyObject *Answerer_tasks(Answerer *a, PyObject *Py_UNUSED(ignored)) {
    long n = 0;
    for (unsigned i = 0; i < a->slots; i++) n += a->tasks[i].tid != 0;
    return PyLong_FromLong(n);
}

static PyObject *Answerer_close(Answerer *a, PyObject *Py_UNUSED(ignored)) {
    table_clear(a);
    memo_clear(a);
    a->closed = 1;
    Py_RETURN_NONE;
}

static PyMethodDef Answerer_methods[] = {
    {"answer", (PyCFunction)Answerer_answer, METH_O,
     "answer(timeout_ms) -> (t0_ns, [(mask, fd, pid, uid, loginuid | None, path | None, "
     "flags, access, kind, remembered decision | None)]) | None"},
    {"remember", (PyCFunction)Answerer_remember, METH_VARARGS,
     "remember(uid, loginuid, access, path, generation, from_ns, until_ns, decision): answer "
     "this allow in C while CLOCK_REALTIME is in [from_ns, until_ns) in that generation"},
    {"forget", (PyCFunction)Answerer_forget, METH_O,
     "forget(generation): only what is remembered in this generation holds from now"},
    {"recalled", (PyCFunction)Answerer_recalled, METH_NOARGS,
     "recalled() -> technician events answered from a remembered allow"},
    {"set_identities", (PyCFunction)Answerer_set_identities, METH_VARARGS,
     "set_identities(technician_uids, principal_uids)"},
    {"set_own", (PyCFunction)Answerer_set_own, METH_O, "set_own(ids): exempt tids and pids"},
    {"syscall_fd", (PyCFunction)Answerer_syscall_fd, METH_O,
     "syscall_fd(tid) -> the kept /proc/TID/syscall fd, or -1"},
    {"counters", (PyCFunction)Answerer_counters, METH_NOARGS,
     "counters() -> (events, allowed, exempt, errors, handles_opened)"},
    {"histogram", (PyCFunction)Answerer_histogram, METH_NOARGS,
     "histogram() -> answer latency counts per bucket"},
    {"tasks", (PyCFunction)Answerer_tasks, METH_NOARGS, "tasks() -> entries held"},
    {"close", (PyCFunction)Answerer_close, METH_NOARGS, "close every /proc handle"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AnswererType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "agent._answer.Answerer",
    .tp_basicsize = sizeof(Answerer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The gate's answer loop (see the module docstring).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Answerer_init,
    .tp_dealloc = (destructor)Answerer_dealloc,
    .tp_methods = Answerer_methods,
};
#endif /* __linux__ */

static struct PyModuleDef answer_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "agent._answer",
    .m_doc = "The gate's fast answer path, in C (Linux only).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__answer(void) {
    PyObject *m = PyModule_Create(&answer_module);
    if (!m) return NULL;
#ifdef __linux__
    if (PyType_Ready(&AnswererType) < 0 || PyModule_AddIntConstant(m, "BUCKETS", BUCKETS) < 0 ||
        PyModule_AddIntConstant(m, "FLAGS_UNKNOWN", FLAGS_UNKNOWN) < 0 ||
        PyModule_AddIntConstant(m, "FLAGS_EXEC", FLAGS_EXEC) < 0 ||
        PyModule_AddIntConstant(m, "FLAGS_UNREAD", FLAGS_UNREAD) < 0 ||
        PyModule_AddIntConstant(m, "KIND_TECHNICIAN", KIND_TECHNICIAN) < 0 ||
        PyModule_AddIntConstant(m, "KIND_ADMIN", KIND_ADMIN) < 0 ||
        PyModule_AddIntConstant(m, "ACCESS_STAT", ACCESS_STAT) < 0 ||
        PyModule_AddIntConstant(m, "ACCESS_READ", ACCESS_READ) < 0 ||
        PyModule_AddIntConstant(m, "ACCESS_WRITE", ACCESS_WRITE) < 0 ||
        PyModule_AddIntConstant(m, "ACCESS_EXEC", ACCESS_EXEC) < 0 ||
        PyModule_AddIntConstant(m, "ACCESS_LIST", ACCESS_LIST) < 0 ||
        PyModule_AddObjectRef(m, "Answerer", (PyObject *)&AnswererType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
