/*
 * shm._atomic: the only C in mmtorture.
 *
 * A Memory object is bound to a writable buffer (an mmap of a POSIX shared
 * memory segment, or a bytearray in tests) and performs sequentially
 * consistent atomic operations on 32- and 64-bit words at byte offsets, plus
 * shared futex wait/wake and cpu_relax.  Every method is METH_FASTCALL and
 * allocates nothing but its result.  Values are signed (as atomic_t and
 * atomic64_t are); an argument may also be given as the unsigned
 * representation of the same bits.  A bad or misaligned offset raises, it
 * never crashes the process.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;
    Py_ssize_t len;
    int counted;
    int tag;
} MemoryObject;

/* A fill of n bytes is recorded as ACCESS_FILL + ceil(log2(n)): it writes at most that many. */
enum { ACCESS_LOAD = 0, ACCESS_STORE = 1, ACCESS_RMW = 2, ACCESS_FILL = 8 };

/* Per process: the process is one CPU. */
static unsigned long long g_accesses;
static long long g_countdown;
static PyObject *g_hook;
static int g_in_hook;
static Py_buffer g_rec_view;
static int64_t *g_rec;
static Py_ssize_t g_rec_cap, g_rec_len;

/* One step: counted, recorded, and the hook called when the countdown ends. -1 if the hook raised. */
static inline int
step(MemoryObject *self, int kind, Py_ssize_t off)
{
    if (!self->counted)
        return 0;
    g_accesses++;
    if (g_rec != NULL && g_rec_len < g_rec_cap)
        g_rec[g_rec_len++] = ((int64_t)(self->tag & 0xff) << 56) | ((int64_t)kind << 48) | (int64_t)off;
    if (g_countdown > 0 && --g_countdown == 0 && g_hook != NULL && !g_in_hook) {
        g_in_hook = 1;
        PyObject *r = PyObject_CallFunction(g_hook, "iin", kind, self->tag, off);
        g_in_hook = 0;
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

static int
check_offset(MemoryObject *self, PyObject *arg, Py_ssize_t size, Py_ssize_t *out)
{
    if (self->base == NULL) {
        PyErr_SetString(PyExc_ValueError, "Memory is released");
        return -1;
    }
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred())
        return -1;
    if (off < 0 || off > self->len - size) {
        PyErr_Format(PyExc_IndexError, "offset %zd out of range for a %zd-byte word in %zd bytes",
                     off, size, self->len);
        return -1;
    }
    if (off % size) {
        PyErr_Format(PyExc_ValueError, "offset %zd is not %zd-byte aligned", off, size);
        return -1;
    }
    if (((uintptr_t)(self->base + off)) % size) {
        PyErr_Format(PyExc_ValueError, "address of offset %zd is not %zd-byte aligned", off, size);
        return -1;
    }
    *out = off;
    return 0;
}

static int
get_value64(PyObject *arg, int64_t *out)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(arg);
        if (u == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        *out = (int64_t)u;
        return 0;
    }
    if (overflow < 0) {
        PyErr_SetString(PyExc_OverflowError, "value does not fit in 64 bits");
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

static int
get_value32(PyObject *arg, int32_t *out)
{
    int64_t v;
    if (get_value64(arg, &v) < 0)
        return -1;
    if (v < INT32_MIN || v > (int64_t)UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value does not fit in 32 bits");
        return -1;
    }
    *out = (int32_t)(uint32_t)v;
    return 0;
}

static int
check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t want)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, nargs);
        return -1;
    }
    return 0;
}

#define W32(off) ((int32_t *)(self->base + (off)))
#define W64(off) ((int64_t *)(self->base + (off)))

static PyObject *
mem_load32(MemoryObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    if (check_nargs("load32", nargs, 1) < 0 || check_offset(self, args[0], 4, &off) < 0 ||
        step(self, ACCESS_LOAD, off) < 0)
        return NULL;
    return PyLong_FromLong(__atomic_load_n(W32(off), __ATOMIC_SEQ_CST));
}

static PyObject *
mem_load64(MemoryObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    if (check_nargs("load64", nargs, 1) < 0 || check_offset(self, args[0], 8, &off) < 0 ||
        step(self, ACCESS_LOAD, off) < 0)
        return NULL;
    return PyLong_FromLongLong(__atomic_load_n(W64(off), __ATOMIC_SEQ_CST));
}

static PyObject *
mem_store32(MemoryObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    int32_t v;
    if (check_nargs("store32", nargs, 2) < 0 || check_offset(self, args[0], 4, &off) < 0 ||
        get_value32(args[1], &v) < 0 || step(self, ACCESS_STORE, off) < 0)
        return NULL;
    __atomic_store_n(W32(off), v, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *
mem_store64(MemoryObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    int64_t v;
    if (check_nargs("store64", nargs, 2) < 0 || check_offset(self, args[0], 8, &off) < 0 ||
        get_value64(args[1], &v) < 0 || step(self, ACCESS_STORE, off) < 0)
        return NULL;
    __atomic_store_n(W64(off), v, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

/* Read-modify-write operations returning the old value. */
#define RMW(name, bits, builtin)                                                        \
    static PyObject *mem_##name##bits(MemoryObject *self, PyObject *const *args,        \
                                      Py_ssize_t nargs)                                 \
    {                                                                                   \
        Py_ssize_t off;                                                                 \
        int##bits##_t v;                                                                \
        if (check_nargs(#name #bits, nargs, 2) < 0 ||                                   \
            check_offset(self, args[0], bits / 8, &off) < 0 ||                          \
            get_value##bits(args[1], &v) < 0 || step(self, ACCESS_RMW, off) < 0)        \
            return NULL;                                                                \
        return PyLong_FromLongLong(builtin(W##bits(off), v, __ATOMIC_SEQ_CST));         \
    }

RMW(xchg, 32, __atomic_exchange_n)
RMW(xchg, 64, __atomic_exchange_n)
RMW(fetch_add, 32, __atomic_fetch_add)
RMW(fetch_add, 64, __atomic_fetch_add)
RMW(fetch_sub, 32, __atomic_fetch_sub)
RMW(fetch_sub, 64, __atomic_fetch_sub)
RMW(fetch_and, 32, __atomic_fetch_and)
RMW(fetch_and, 64, __atomic_fetch_and)
RMW(fetch_or, 32, __atomic_fetch_or)
RMW(fetch_or, 64, __atomic_fetch_or)
RMW(fetch_xor, 32, __atomic_fetch_xor)
RMW(fetch_xor, 64, __atomic_fetch_xor)

/* cmpxchg(off, old, new) -> the value found (== old on success), as the kernel's. */
#define CMPXCHG(bits)                                                                   \
    static PyObject *mem_cmpxchg##bits(MemoryObject *self, PyObject *const *args,       \
                                       Py_ssize_t nargs)                                \
    {                                                                                   \
        Py_ssize_t off;                                                                 \
        int##bits##_t expected, desired;                                                \
        if (check_nargs("cmpxchg" #bits, nargs, 3) < 0 ||                               \
            check_offset(self, args[0], bits / 8, &off) < 0 ||                          \
            get_value##bits(args[1], &expected) < 0 ||                                  \
            get_value##bits(args[2], &desired) < 0 || step(self, ACCESS_RMW, off) < 0)  \
            return NULL;                                                                \
        __atomic_compare_exchange_n(W##bits(off), &expected, desired, 0,                \
                                    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
        return PyLong_FromLongLong(expected);                                           \
    }

CMPXCHG(32)
CMPXCHG(64)

/*
 * futex_wait(off, expected, timeout=None) -> bool
 * Sleeps (GIL released) while the 32-bit word at off equals expected, on a
 * shared futex so that other processes mapping the segment can wake it.
 * False on timeout; True otherwise (woken, value already changed, or a
 * signal whose Python handler did not raise: callers re-check and loop).
 */
static PyObject *
mem_futex_wait(MemoryObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    int32_t expected;
    struct timespec ts, *tsp = NULL;
    if (nargs < 2 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "futex_wait() takes 2 or 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (check_offset(self, args[0], 4, &off) < 0 || get_value32(args[1], &expected) < 0)
        return NULL;
    if (nargs == 3 && args[2] != Py_None) {
        double t = PyFloat_AsDouble(args[2]);
        if (t == -1.0 && PyErr_Occurred())
            return NULL;
        if (!(t >= 0.0)) {
            PyErr_SetString(PyExc_ValueError, "timeout must be a non-negative number");
            return NULL;
        }
        if (t > 1e9)
            t = 1e9;
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        tsp = &ts;
    }
    long rc;
    int err;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_futex, W32(off), FUTEX_WAIT, expected, tsp, NULL, 0);
    err = errno;
    Py_END_ALLOW_THREADS
    if (rc == 0)
        Py_RETURN_TRUE;
    switch (err) {
    case ETIMEDOUT:
        Py_RETURN_FALSE;
    case EAGAIN:
        Py_RETURN_TRUE;
    case EINTR:
        if (PyErr_CheckSignals() < 0)
            return NULL;
        Py_RETURN_TRUE;
    default:
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
}

/* futex_wake(off, n) -> number of waiters woken */
static PyObject *
mem_futex_wake(MemoryObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    int32_t n;
    if (check_nargs("futex_wake", nargs, 2) < 0 || check_offset(self, args[0], 4, &off) < 0 ||
        get_value32(args[1], &n) < 0)
        return NULL;
    if (n < 0)
        n = INT_MAX;
    long rc = syscall(SYS_futex, W32(off), FUTEX_WAKE, n, NULL, NULL, 0);
    if (rc < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(rc);
}

static PyObject *
mem_cpu_relax(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    (void)args;
    (void)nargs;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
    Py_RETURN_NONE;
}


/*
 * A Treiber stack of indices: the head word is (count << 32 | index + 1), 0
 * empty; the next index of entry i is the 32-bit word at next0 + i * stride.
 * The loads and the cmpxchg are steps, as the Python they replace made them.
 */
static int
stack_offsets(MemoryObject *self, PyObject *const *args, Py_ssize_t *head, Py_ssize_t *next0, Py_ssize_t *stride)
{
    if (check_offset(self, args[0], 8, head) < 0 || check_offset(self, args[1], 4, next0) < 0)
        return -1;
    *stride = PyLong_AsSsize_t(args[2]);
    if (*stride == -1 && PyErr_Occurred())
        return -1;
    if (*stride <= 0 || *stride % 4) {
        PyErr_SetString(PyExc_ValueError, "a stack's stride is a positive multiple of 4");
        return -1;
    }
    return 0;
}

static int
stack_next_off(MemoryObject *self, Py_ssize_t next0, Py_ssize_t stride, int64_t i, Py_ssize_t *out)
{
    if (i < 0 || i > (self->len - 4 - next0) / stride) {
        PyErr_Format(PyExc_IndexError, "stack index %lld out of range", (long long)i);
        return -1;
    }
    *out = next0 + (Py_ssize_t)i * stride;
    return 0;
}

/* stack_pop(head_off, next0, stride) -> the index popped, or -1 if the stack is empty */
static PyObject *
mem_stack_pop(MemoryObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t head, next0, stride, noff;
    if (check_nargs("stack_pop", nargs, 3) < 0 || stack_offsets(self, args, &head, &next0, &stride) < 0)
        return NULL;
    for (;;) {
        if (step(self, ACCESS_LOAD, head) < 0)
            return NULL;
        int64_t h = __atomic_load_n(W64(head), __ATOMIC_SEQ_CST);
        int64_t i = (int64_t)(h & 0xFFFFFFFF) - 1;
        if (i < 0)
            return PyLong_FromLong(-1);
        if (stack_next_off(self, next0, stride, i, &noff) < 0 || step(self, ACCESS_LOAD, noff) < 0)
            return NULL;
        int64_t nxt = __atomic_load_n(W32(noff), __ATOMIC_SEQ_CST);
        int64_t want = (int64_t)((((uint64_t)h >> 32) + 1) << 32) | (int64_t)(uint32_t)(nxt + 1);
        if (step(self, ACCESS_RMW, head) < 0)
            return NULL;
        if (__atomic_compare_exchange_n(W64(head), &h, want, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return PyLong_FromLongLong(i);
    }
}

/* stack_push(head_off, next0, stride, i) */
static PyObject *
mem_stack_push(MemoryObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t head, next0, stride, noff;
    int64_t i;
    if (check_nargs("stack_push", nargs, 4) < 0 || stack_offsets(self, args, &head, &next0, &stride) < 0 ||
        get_value64(args[3], &i) < 0 || stack_next_off(self, next0, stride, i, &noff) < 0)
        return NULL;
    if (i >= 0xFFFFFFFF) {
        PyErr_SetString(PyExc_OverflowError, "a stack index must fit in 32 bits");
        return NULL;
    }
    for (;;) {
        if (step(self, ACCESS_LOAD, head) < 0)
            return NULL;
        int64_t h = __atomic_load_n(W64(head), __ATOMIC_SEQ_CST);
        if (step(self, ACCESS_STORE, noff) < 0)
            return NULL;
        __atomic_store_n(W32(noff), (int32_t)((h & 0xFFFFFFFF) - 1), __ATOMIC_SEQ_CST);
        int64_t want = (int64_t)((((uint64_t)h >> 32) + 1) << 32) | (i + 1);
        if (step(self, ACCESS_RMW, head) < 0)
            return NULL;
        if (__atomic_compare_exchange_n(W64(head), &h, want, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            Py_RETURN_NONE;
    }
}

/* fill(off, nbytes, byte): memset of a range, one step (a new table zeroed, a freed page poisoned). */
static PyObject *
mem_fill(MemoryObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off, n;
    int32_t byte;
    if (check_nargs("fill", nargs, 3) < 0 || check_offset(self, args[0], 1, &off) < 0)
        return NULL;
    n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || n > self->len - off) {
        PyErr_Format(PyExc_IndexError, "fill of %zd bytes at %zd out of range for %zd bytes", n, off, self->len);
        return NULL;
    }
    int kind = ACCESS_FILL;
    while (kind < 63 && ((Py_ssize_t)1 << (kind - ACCESS_FILL)) < n)
        kind++;
    if (get_value32(args[2], &byte) < 0 || step(self, kind, off) < 0)
        return NULL;
    memset(self->base + off, byte & 0xff, (size_t)n);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *
mod_accesses(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    (void)self;
    return PyLong_FromUnsignedLongLong(g_accesses);
}

static PyObject *
mod_countdown(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    (void)self;
    return PyLong_FromLongLong(g_countdown);
}

static PyObject *
mod_set_countdown(PyObject *self, PyObject *arg)
{
    (void)self;
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    g_countdown = n < 0 ? 0 : n;
    Py_RETURN_NONE;
}

static PyObject *
mod_set_hook(PyObject *self, PyObject *arg)
{
    (void)self;
    if (arg != Py_None && !PyCallable_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "the access hook must be callable or None");
        return NULL;
    }
    PyObject *old = g_hook;
    g_hook = arg == Py_None ? NULL : Py_NewRef(arg);
    Py_XDECREF(old);
    g_countdown = 0;
    Py_RETURN_NONE;
}

static PyObject *
mod_record(PyObject *self, PyObject *arg)
{
    (void)self;
    if (g_rec != NULL) {
        g_rec = NULL;
        PyBuffer_Release(&g_rec_view);
    }
    g_rec_cap = g_rec_len = 0;
    if (arg == Py_None)
        Py_RETURN_NONE;
    if (PyObject_GetBuffer(arg, &g_rec_view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (((uintptr_t)g_rec_view.buf) % 8) {
        PyBuffer_Release(&g_rec_view);
        PyErr_SetString(PyExc_ValueError, "the record buffer must be 8-byte aligned");
        return NULL;
    }
    g_rec = (int64_t *)g_rec_view.buf;
    g_rec_cap = g_rec_view.len / 8;
    Py_RETURN_NONE;
}

static PyObject *
mod_recorded(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    (void)self;
    return PyLong_FromSsize_t(g_rec_len);
}

static PyObject *
mem_release(MemoryObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->base != NULL) {
        self->base = NULL;
        self->len = 0;
        PyBuffer_Release(&self->view);
    }
    Py_RETURN_NONE;
}

static int
mem_init(MemoryObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *buffer;
    int counted = 1, tag = 0;
    static char *kwlist[] = {"buffer", "counted", "tag", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|pi:Memory", kwlist, &buffer, &counted, &tag))
        return -1;
    if (self->base != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Memory is already bound");
        return -1;
    }
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    self->base = self->view.buf;
    self->len = self->view.len;
    self->counted = counted;
    self->tag = tag;
    return 0;
}

static void
mem_dealloc(MemoryObject *self)
{
    if (self->base != NULL)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
mem_len(MemoryObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->len);
}

static PyObject *
mem_counted(MemoryObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->counted);
}

static PyObject *
mem_get_tag(MemoryObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->tag);
}

static int
mem_set_tag(MemoryObject *self, PyObject *v, void *Py_UNUSED(closure))
{
    long t = v == NULL ? -1 : PyLong_AsLong(v);
    if (t == -1 && PyErr_Occurred())
        return -1;
    if (t < 0 || t > 255) {
        PyErr_SetString(PyExc_ValueError, "a tag is 0..255");
        return -1;
    }
    self->tag = (int)t;
    return 0;
}

static PyObject *
mem_repr(MemoryObject *self)
{
    return PyUnicode_FromFormat("<shm.Memory %zd bytes at %p>", self->len, self->base);
}

#define FAST(name, doc) {#name, (PyCFunction)(void (*)(void))mem_##name, METH_FASTCALL, doc}

static PyMethodDef mem_methods[] = {
    FAST(load32, "load32(off) -> int: atomic load of a 32-bit word"),
    FAST(load64, "load64(off) -> int: atomic load of a 64-bit word"),
    FAST(store32, "store32(off, v): atomic store of a 32-bit word"),
    FAST(store64, "store64(off, v): atomic store of a 64-bit word"),
    FAST(xchg32, "xchg32(off, v) -> old"),
    FAST(xchg64, "xchg64(off, v) -> old"),
    FAST(cmpxchg32, "cmpxchg32(off, old, new) -> value found (== old on success)"),
    FAST(cmpxchg64, "cmpxchg64(off, old, new) -> value found (== old on success)"),
    FAST(fetch_add32, "fetch_add32(off, v) -> old"),
    FAST(fetch_add64, "fetch_add64(off, v) -> old"),
    FAST(fetch_sub32, "fetch_sub32(off, v) -> old"),
    FAST(fetch_sub64, "fetch_sub64(off, v) -> old"),
    FAST(fetch_and32, "fetch_and32(off, v) -> old"),
    FAST(fetch_and64, "fetch_and64(off, v) -> old"),
    FAST(fetch_or32, "fetch_or32(off, v) -> old"),
    FAST(fetch_or64, "fetch_or64(off, v) -> old"),
    FAST(fetch_xor32, "fetch_xor32(off, v) -> old"),
    FAST(fetch_xor64, "fetch_xor64(off, v) -> old"),
    FAST(fill, "fill(off, nbytes, byte): set a range of bytes, one step"),
    FAST(stack_pop, "stack_pop(head_off, next0, stride) -> index popped from a Treiber stack, -1 if empty"),
    FAST(stack_push, "stack_push(head_off, next0, stride, i): push index i on a Treiber stack"),
    FAST(futex_wait, "futex_wait(off, expected, timeout=None) -> False on timeout"),
    FAST(futex_wake, "futex_wake(off, n) -> number woken (n < 0: all)"),
    {"cpu_relax", (PyCFunction)(void (*)(void))mem_cpu_relax, METH_FASTCALL,
     "cpu_relax(): the pause instruction of a spin loop"},
    {"release", (PyCFunction)mem_release, METH_NOARGS,
     "release(): give the buffer back; further operations raise"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef mem_getset[] = {
    {"nbytes", (getter)mem_len, NULL, "size of the bound buffer in bytes", NULL},
    {"counted", (getter)mem_counted, NULL, "whether its accesses are steps of this process", NULL},
    {"tag", (getter)mem_get_tag, (setter)mem_set_tag, "0..255: names this Memory in hooks and records", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MemoryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shm.Memory",
    .tp_basicsize = sizeof(MemoryObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Memory(buffer, counted=True, tag=0): sequentially consistent atomics and futexes on a writable buffer",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)mem_init,
    .tp_dealloc = (destructor)mem_dealloc,
    .tp_methods = mem_methods,
    .tp_getset = mem_getset,
    .tp_repr = (reprfunc)mem_repr,
};


/*
 * Walker: a walk down tables of 64-bit entries kept in pool pages, each
 * entry naming the next table by its reference (pfn | gen << pfn_bits), as
 * a page-table walk does.  Each table is checked as a checked load checks a
 * page: its struct page's first word must be (gen << 32 | live).  The loads
 * are the Memory's, one step each, in the order of the Python they replace:
 * the entry, then the table's struct page.
 */
typedef struct {
    PyObject_HEAD
    MemoryObject *mem;
    Py_ssize_t page0, stride, data0, psize;
    int pfn_bits, shift;
    int64_t present, live;
    int64_t freed;
    int stale;
} WalkerObject;

/* The Memory is still bound after a step (a hook may have released it). */
static inline int
step_alive(MemoryObject *m)
{
    if (m->base == NULL) {
        PyErr_SetString(PyExc_ValueError, "Memory is released");
        return -1;
    }
    return 0;
}

/* One checked load of entry `index` of table `ref`: 0 if all is well, 1 if the table is freed
 * (self->stale and self->freed set), -1 on error.  Bounds are checked before any arithmetic
 * that could overflow, and again after each step (its hook may have released the Memory). */
static inline int
walker_load(WalkerObject *self, int64_t ref, Py_ssize_t index, int64_t *out)
{
    MemoryObject *m = self->mem;
    if (m == NULL || m->base == NULL) {
        PyErr_SetString(PyExc_ValueError, m == NULL ? "Walker is not initialised" : "Memory is released");
        return -1;
    }
    int64_t pfn = ref & (((int64_t)1 << self->pfn_bits) - 1);
    if (index < 0 || index >= self->psize / 8 || pfn > (m->len - self->data0) / self->psize ||
        pfn > (m->len - self->page0) / self->stride) {
        PyErr_Format(PyExc_IndexError, "walk of table %lld index %zd out of range", (long long)ref, index);
        return -1;
    }
    Py_ssize_t off = self->data0 + (Py_ssize_t)pfn * self->psize + 8 * index;
    Py_ssize_t f = self->page0 + (Py_ssize_t)pfn * self->stride;
    if (off > m->len - 8 || f > m->len - 8 || ((uintptr_t)(m->base + off)) % 8 || ((uintptr_t)(m->base + f)) % 8) {
        PyErr_Format(PyExc_IndexError, "walk of table %lld index %zd out of range", (long long)ref, index);
        return -1;
    }
    if (step(m, ACCESS_LOAD, off) < 0 || step_alive(m) < 0)
        return -1;
    int64_t e = __atomic_load_n((int64_t *)(m->base + off), __ATOMIC_SEQ_CST);
    if (step(m, ACCESS_LOAD, f) < 0 || step_alive(m) < 0)
        return -1;
    int64_t w = __atomic_load_n((int64_t *)(m->base + f), __ATOMIC_SEQ_CST);
    if ((uint64_t)w != (((uint64_t)ref >> self->pfn_bits) << 32 | (uint64_t)self->live)) {
        self->stale = 1;
        self->freed = ref;
        return 1;
    }
    *out = e;
    return 0;
}

/* walk(ref, i0, i1, ...) -> the entry the last index names, or 0 where a table is missing, an
 * entry is not present, or a table is freed (then .stale is true and .freed names it). */
static PyObject *
walker_walk(WalkerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t ref, e = 0;
    self->freed = 0;
    self->stale = 0;
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "walk() takes a table and at least one index");
        return NULL;
    }
    if (get_value64(args[0], &ref) < 0)
        return NULL;
    for (Py_ssize_t i = 1; i < nargs; i++) {
        if (!ref)
            return PyLong_FromLong(0);
        Py_ssize_t index = PyLong_AsSsize_t(args[i]);
        if (index == -1 && PyErr_Occurred())
            return NULL;
        int r = walker_load(self, ref, index, &e);
        if (r < 0)
            return NULL;
        if (r > 0 || !(e & self->present))
            return PyLong_FromLong(0);
        ref = (int64_t)((uint64_t)e >> self->shift);
    }
    return PyLong_FromLongLong(e);
}

/* load(ref, index) -> entry `index` of table `ref`, whatever it holds; 0 if the table is freed
 * (then .stale is true and .freed names it). */
static PyObject *
walker_entry(WalkerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t ref, e = 0;
    self->freed = 0;
    self->stale = 0;
    if (check_nargs("load", nargs, 2) < 0 || get_value64(args[0], &ref) < 0)
        return NULL;
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    int r = walker_load(self, ref, index, &e);
    if (r < 0)
        return NULL;
    return PyLong_FromLongLong(r ? 0 : e);
}

static int
walker_init(WalkerObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *mem;
    Py_ssize_t page0, stride, data0, psize;
    int pfn_bits, shift;
    long long present, live;
    static char *kwlist[] = {"memory", "page0", "stride", "data0", "page_size", "pfn_bits", "shift", "present",
                             "live", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!nnnniiLL:Walker", kwlist, &MemoryType, &mem, &page0, &stride,
                                     &data0, &psize, &pfn_bits, &shift, &present, &live))
        return -1;
    if (page0 < 0 || data0 < 0 || stride <= 0 || stride % 8 || psize < 8 || psize % 8 || page0 % 8 || data0 % 8 ||
        pfn_bits <= 0 || pfn_bits > 40 || shift < 0 || shift > 63) {
        PyErr_SetString(PyExc_ValueError, "Walker: a bad layout");
        return -1;
    }
    Py_XSETREF(self->mem, (MemoryObject *)Py_NewRef(mem));
    self->page0 = page0;
    self->stride = stride;
    self->data0 = data0;
    self->psize = psize;
    self->pfn_bits = pfn_bits;
    self->shift = shift;
    self->present = present;
    self->live = live;
    self->freed = 0;
    self->stale = 0;
    return 0;
}

static void
walker_dealloc(WalkerObject *self)
{
    Py_XDECREF(self->mem);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
walker_get_freed(WalkerObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLongLong(self->freed);
}

static PyObject *
walker_get_stale(WalkerObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->stale);
}

static PyMethodDef walker_methods[] = {
    {"walk", (PyCFunction)(void (*)(void))walker_walk, METH_FASTCALL,
     "walk(ref, i0, i1, ...) -> the entry at the end, or 0 where the walk stops (.stale: at a freed table)"},
    {"load", (PyCFunction)(void (*)(void))walker_entry, METH_FASTCALL,
     "load(ref, index) -> the entry, or 0 if the table is freed (.stale; .freed names it)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef walker_getset[] = {
    {"stale", (getter)walker_get_stale, NULL, "whether the last walk or load met a freed table", NULL},
    {"freed", (getter)walker_get_freed, NULL, "the freed table the last walk or load met (if stale)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shm.Walker",
    .tp_basicsize = sizeof(WalkerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Walker(memory, page0, stride, data0, page_size, pfn_bits, shift, present, live): checked walks "
              "down tables of 64-bit entries in pool pages",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)walker_init,
    .tp_dealloc = (destructor)walker_dealloc,
    .tp_methods = walker_methods,
    .tp_getset = walker_getset,
};

static PyMethodDef module_methods[] = {
    {"cpu_relax", (PyCFunction)(void (*)(void))mem_cpu_relax, METH_FASTCALL,
     "cpu_relax(): the pause instruction of a spin loop"},
    {"accesses", (PyCFunction)mod_accesses, METH_NOARGS,
     "accesses() -> int: counted accesses this process has made"},
    {"countdown", (PyCFunction)mod_countdown, METH_NOARGS, "countdown() -> int: accesses left before the hook, 0 off"},
    {"set_countdown", (PyCFunction)mod_set_countdown, METH_O,
     "set_countdown(n): call the hook just before the n-th counted access from now (0: never)"},
    {"set_hook", (PyCFunction)mod_set_hook, METH_O,
     "set_hook(f | None): f(kind, tag, off) with kind 0 load, 1 store, 2 read-modify-write, "
     "8 + ceil(log2(n)) a fill of n bytes; disarms"},
    {"record", (PyCFunction)mod_record, METH_O,
     "record(buffer | None): append each counted access, (tag << 56 | kind << 48 | off), until full"},
    {"recorded", (PyCFunction)mod_recorded, METH_NOARGS, "recorded() -> int: entries recorded"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef atomic_module = {
    PyModuleDef_HEAD_INIT, "shm._atomic", "Sequentially consistent atomics and futexes", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__atomic(void)
{
    if (PyType_Ready(&MemoryType) < 0 || PyType_Ready(&WalkerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&atomic_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&MemoryType);
    if (PyModule_AddObject(m, "Memory", (PyObject *)&MemoryType) < 0) {
        Py_DECREF(&MemoryType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&WalkerType);
    if (PyModule_AddObject(m, "Walker", (PyObject *)&WalkerType) < 0) {
        Py_DECREF(&WalkerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
