/*
 * audit.c: gdb-cudashim's in-process recorder, an rtld-audit library (LD_AUDIT, glibc's
 * <link.h> la_* interface). It records, inside the traced process and with no debugger stop:
 *
 *   - every dlsym/dlvsym: the handle, the name, who asked, who answered (libc's dlsym, or an
 *     interposer's dlsym hook), found or NULL;
 *   - every call of the CUDA, runtime and NVML entry points in audit_specs.h (generated from
 *     gdb_cudashim/core/calls.py): the arguments, the result and the out-parameters, and for
 *     cuGetProcAddress(_v2) each symbol asked, its cudaVersion and flags and the pointer returned;
 *   - each object ld.so opens and each path it searches (la_objopen, la_objsearch).
 *
 * Records go to a file-backed ring, $GDB_CUDASHIM_RING_DIR/PID.N.ring, mapped MAP_SHARED: what
 * the process wrote is there even if it is SIGKILLed. gdb_cudashim/core/recorder.py reads it.
 * Without GDB_CUDASHIM_RING_DIR (or when the ring cannot be made) the library does nothing.
 *
 * How calls are seen, without changing what the program sees:
 *   - la_symbind64 is told of every PLT binding and of every dlsym that found something
 *     (LA_SYMB_DLSYM). For an entry point of audit_specs.h it hands back a recording wrapper
 *     (a "call slot": a 16-byte stub that jumps to cs_call_common with its slot number) that
 *     calls the real function with the same six argument registers and returns its rax.
 *   - cuGetProcAddress(_v2)'s wrapper swaps the pointers it returns for the entry points of
 *     audit_specs.h for wrappers too (the real pointer is what is recorded).
 *   - dlsym and dlvsym as bound from libc: the stub records the call and then JUMPS to libc's
 *     dlsym with the stack exactly as the caller left it. dlsym finds its caller from its return
 *     address (RTLD_NEXT, RTLD_DEFAULT and the namespace depend on it; an audit library lives in
 *     a namespace of its own), so calling it from here would change its answer. Found/NULL then
 *     comes from la_symbind64's LA_SYMB_DLSYM call for the same thread (found) or its absence.
 *   - a dlsym that is not libc's (an interposer's hook, HAMi-core's way) is called through a call
 *     slot, so its answer is recorded; the real dlsym it calls in turn is recorded as asked by it.
 * dlopen is not wrapped: it searches the caller's DT_RPATH, which only its real caller has.
 *
 * Built -g -O2 with frame pointers and unwind tables: gdb unwinds through the wrappers (the gdb
 * side loads this file's symbols into each recorded process) and hides their frames.
 *
 * It links nothing, not even the C library (-nostdlib; raw system calls, its own string
 * functions): an audit library's dependencies are loaded again in a link-map namespace of their
 * own, and a second libc and ld.so there cost every run their start-up, and gdb reading their
 * symbols (~60 ms measured).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <link.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

/* ------------------------------------------------------ no C library: its few parts -- */
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#define sys3(n, a, b, c) sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)

/* gcc may call these for struct copies and initialisers: ours, hidden */
__attribute__((visibility("hidden"))) void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

__attribute__((visibility("hidden"))) void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

static size_t strnlen_(const char *s, size_t limit)
{
    size_t n = 0;
    while (n < limit && s[n])
        n++;
    return n;
}

static size_t strlen_(const char *s)
{
    return strnlen_(s, (size_t)-1);
}

static int strncmp_(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (unsigned char)*a - (unsigned char)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

static int strcmp_(const char *a, const char *b)
{
    return strncmp_(a, b, (size_t)-1);
}

static const char *strrchr_(const char *s, char c)
{
    const char *last = NULL;
    for (; *s; s++)
        if (*s == c)
            last = s;
    return last;
}

static char *put_str(char *p, char *end, const char *s)
{
    while (*s && p < end)
        *p++ = *s++;
    return p;
}

static char *put_num(char *p, char *end, unsigned long v)
{
    char digits[24];
    int n = 0;
    do
        digits[n++] = (char)('0' + v % 10);
    while ((v /= 10) && n < 24);
    while (n && p < end)
        *p++ = digits[--n];
    return p;
}

/* NAME's value in this process's environment (read from /proc: an audit library gets none) */
static int env_value(const char *name, char *out, size_t size)
{
    static char env[32768];
    int fd = (int)sys3(SYS_open, "/proc/self/environ", O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    long got = 0, n;
    while (got < (long)sizeof env - 1 && (n = sys3(SYS_read, fd, env + got, sizeof env - 1 - got)) > 0)
        got += n;
    sys3(SYS_close, fd, 0, 0);
    env[got < 0 ? 0 : got] = 0;
    size_t len = strlen_(name);
    for (long at = 0; at < got; at += (long)strnlen_(env + at, got - at) + 1) {
        if (strncmp_(env + at, name, len) == 0 && env[at + len] == '=') {
            const char *v = env + at + len + 1;
            size_t vl = strnlen_(v, size - 1);
            memcpy(out, v, vl);
            out[vl] = 0;
            return vl > 0;
        }
    }
    return 0;
}

#define EXPORT __attribute__((visibility("default")))
#define HIDDEN __attribute__((visibility("hidden")))

enum { CS_REG = 0, CS_STR = 1, CS_UUID = 2, CS_OUT = 3, CS_OUTSTR = 4 };
struct cs_spec {
    const char *name;
    unsigned char nargs;
    unsigned char result_str; /* the result is a const char * (cudaGetErrorString) */
    unsigned char kind[6];
    unsigned short size[6];
};
#include "audit_specs.h"

/* ------------------------------------------------------------------ the ring ---------- */
#define RING_MAGIC "CSRING01"
#define RING_VERSION 1
#define RING_DATA 4096                 /* the header page, then records */
#define RING_BYTES (4u << 20)          /* allocated when made: a write to a mapped page the disk has no
                                          room for would be a SIGBUS in the program */
#define REC_COMMIT 0x43534852u         /* "RHSC": a record whose every byte is written */
#define CALLS_RECORDED 2048            /* per entry point and ring: later calls are counted only */
#define MAX_SPECS 64

enum {
    REC_SPECS = 1,      /* the spec names, in cs_specs order: payload "name\0name\0..." */
    REC_OBJ = 2,        /* la_objopen: id (link_map), l_addr, lmid, name */
    REC_OBJCLOSE = 3,   /* la_objclose: id */
    REC_SEARCH = 4,     /* la_objsearch: requester id, flag, name */
    REC_CALL = 5,       /* a wrapped call's entry: fn, caller pc, 6 registers, entry strings */
    REC_RETURN = 6,     /* its return: rax, out-parameters (serial pairs it with its entry) */
    REC_DLSYM = 7,      /* a dlsym/dlvsym: via (libc or hook), target fn, handle, caller pc, name, version */
    REC_DLSYM_RET = 8,  /* a hook's answer (serial pairs it) */
    REC_BIND = 9,       /* la_symbind64: flags, ref id, def id, value, value handed back, name */
};

struct ring_header {
    char magic[8];
    uint32_t version;
    uint32_t pid;          /* the process that made it (a fork without exec shares it: each record has its pid) */
    uint64_t cursor;       /* bytes of records reserved, from RING_DATA */
    uint64_t capacity;     /* bytes for records */
    uint64_t dropped;      /* records that did not fit */
    uint64_t t0_ns;        /* CLOCK_MONOTONIC when it was made */
    uint64_t serial;       /* the last serial handed out */
    uint32_t nspecs;
    uint32_t calls_recorded; /* CALLS_RECORDED */
    uint64_t unwrapped;    /* bindings left unwrapped: no free slot */
    uint64_t calls[MAX_SPECS];      /* calls made, per spec */
    char exe[512];         /* /proc/self/exe when it was made */
    char cwd[512];         /* its working directory then: ld.so's relative names (LD_LIBRARY_PATH=dir) are from it */
};

struct rec {
    uint32_t commit;
    uint32_t len;      /* the whole record, a multiple of 8 */
    uint16_t type;
    uint16_t spec;
    uint32_t pid;
    uint32_t tid;
    uint32_t aux;      /* REC_DLSYM: 1 dlvsym; REC_SEARCH: the flag; REC_BIND: the flags */
    uint64_t t_ns;
    uint64_t serial;
};

static struct ring_header *g_ring;
static char *g_data;

/* Every record's pid, tid and time, without a system call each. While gdb captures writes
 * (the init window) it resumes the program with PTRACE_SYSCALL, so EVERY system call stops it
 * twice: three per record were ~2700 hidden stops on the seed case (~1 in 8 of its cost over plain
 * gdb). Each falls back to the system call when its fast way is not there. */
static long (*g_vdso_clock_gettime)(long, struct timespec *);
struct pid_page {
    uint32_t pid; /* 0 until known: the page is MADV_WIPEONFORK, so a forked child reads 0 */
};
static struct pid_page *g_pid_page;
static long g_tid_off; /* glibc's struct pthread: where the kernel keeps the thread's tid; 0 unknown */
#define GLIBC_X86_64_PTHREAD_TID 0x2d0 /* _thread_db_pthread_tid's offset (glibc 2.1x-2.4x), checked below */
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif

static uint64_t now_ns(void)
{
    struct timespec ts = {0, 0};
    if (!g_vdso_clock_gettime || g_vdso_clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        sys3(SYS_clock_gettime, CLOCK_MONOTONIC, &ts, 0);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static char *thread_self(void)
{
    char *self;
    __asm__("mov %%fs:0x10, %0" : "=r"(self)); /* tcbhead_t.self: ld.so set it up before loading us */
    return self;
}

static uint32_t my_pid(void)
{
    uint32_t pid = g_pid_page ? __atomic_load_n(&g_pid_page->pid, __ATOMIC_RELAXED) : 0;
    if (!pid) {
        pid = (uint32_t)sys3(SYS_getpid, 0, 0, 0);
        if (g_pid_page)
            __atomic_store_n(&g_pid_page->pid, pid, __ATOMIC_RELAXED);
    }
    return pid;
}

static uint32_t my_tid(void)
{
    if (g_tid_off)
        return *(volatile uint32_t *)(thread_self() + g_tid_off); /* the kernel wrote it there (CLONE_*_SETTID) */
    return (uint32_t)sys3(SYS_gettid, 0, 0, 0);
}

/* The vDSO's __vdso_clock_gettime, from its section headers (the whole image is mapped). */
static void find_vdso_clock(void)
{
    static uint64_t auxv[128];
    int fd = (int)sys3(SYS_open, "/proc/self/auxv", O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return;
    long got = sys3(SYS_read, fd, auxv, sizeof auxv - 16);
    sys3(SYS_close, fd, 0, 0);
    const unsigned char *base = NULL;
    for (long i = 0; got > 0 && i + 1 < got / 8 && auxv[i]; i += 2)
        if (auxv[i] == 33) /* AT_SYSINFO_EHDR */
            base = (const unsigned char *)auxv[i + 1];
    if (!base)
        return;
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)base;
    if (strncmp_((const char *)eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
        eh->e_shentsize != sizeof(Elf64_Shdr) || eh->e_phentsize != sizeof(Elf64_Phdr))
        return;
    const Elf64_Phdr *ph = (const Elf64_Phdr *)(base + eh->e_phoff);
    long bias = -1;
    for (int i = 0; i < eh->e_phnum; i++)
        if (ph[i].p_type == PT_LOAD) {
            bias = (long)(uintptr_t)base + (long)ph[i].p_offset - (long)ph[i].p_vaddr;
            break;
        }
    if (bias == -1)
        return;
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(base + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_DYNSYM || sh[i].sh_link >= eh->e_shnum || sh[i].sh_entsize != sizeof(Elf64_Sym))
            continue;
        const Elf64_Sym *sym = (const Elf64_Sym *)(base + sh[i].sh_offset);
        const char *names = (const char *)(base + sh[sh[i].sh_link].sh_offset);
        for (size_t k = 0; k < sh[i].sh_size / sizeof(Elf64_Sym); k++)
            if (ELF64_ST_TYPE(sym[k].st_info) == STT_FUNC && sym[k].st_shndx != SHN_UNDEF &&
                strcmp_(names + sym[k].st_name, "__vdso_clock_gettime") == 0) {
                g_vdso_clock_gettime = (long (*)(long, struct timespec *))(uintptr_t)(bias + (long)sym[k].st_value);
                return;
            }
    }
}

static void fast_ids_init(void)
{
    find_vdso_clock();
    struct timespec ts = {0, 0}; /* checked once: a vDSO that fails is never used */
    if (g_vdso_clock_gettime && g_vdso_clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        g_vdso_clock_gettime = NULL;
    long page = sys6(SYS_mmap, 0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page < 0 && page > -4096)
        page = 0;
    if (page && sys3(SYS_madvise, page, 4096, MADV_WIPEONFORK) != 0) {
        sys3(SYS_munmap, page, 4096, 0); /* no way to see a fork: ask each time */
        page = 0;
    }
    g_pid_page = (struct pid_page *)page;
    /* the tid where glibc's libthread_db finds it, if this is that glibc: else a system call each time */
    char *self = thread_self();
    long tid = sys3(SYS_gettid, 0, 0, 0);
    if (self && tid > 0 && *(volatile int32_t *)(self + GLIBC_X86_64_PTHREAD_TID) == (int32_t)tid)
        g_tid_off = GLIBC_X86_64_PTHREAD_TID;
}

static struct rec *reserve(unsigned type, unsigned spec, size_t payload, uint64_t serial)
{
    if (!g_ring)
        return NULL;
    size_t len = (sizeof(struct rec) + payload + 7) & ~(size_t)7;
    uint64_t off = __atomic_fetch_add(&g_ring->cursor, len, __ATOMIC_RELAXED);
    if (off + len > g_ring->capacity) {
        __atomic_fetch_add(&g_ring->dropped, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    struct rec *r = (struct rec *)(g_data + off);
    r->len = (uint32_t)len;
    r->type = (uint16_t)type;
    r->spec = (uint16_t)spec;
    r->pid = my_pid();
    r->tid = my_tid();
    r->aux = 0;
    r->t_ns = now_ns();
    r->serial = serial;
    return r;
}

static void commit(struct rec *r)
{
    __atomic_store_n(&r->commit, REC_COMMIT, __ATOMIC_RELEASE);
}

static uint64_t next_serial(void)
{
    return g_ring ? __atomic_add_fetch(&g_ring->serial, 1, __ATOMIC_RELAXED) : 0;
}

/* A payload writer: fixed words, then length-prefixed byte strings (u16 length, bytes). */
struct out {
    char *p;
};

static void put64(struct out *o, uint64_t v)
{
    memcpy(o->p, &v, 8);
    o->p += 8;
}

static void putbytes(struct out *o, const void *data, size_t n)
{
    uint16_t len = (uint16_t)n;
    memcpy(o->p, &len, 2);
    if (n)
        memcpy(o->p + 2, data, n);
    o->p += 2 + n;
}

static size_t cstrlen(const char *s, size_t limit)
{
    return s ? strnlen_(s, limit) : 0;
}

static void ring_open(void)
{
    char dir[2048];
    if (!env_value("GDB_CUDASHIM_RING_DIR", dir, sizeof dir))
        return;
    char path[4096];
    int fd = -1;
    long pid = sys3(SYS_getpid, 0, 0, 0);
    for (int n = 0; n < 64 && fd < 0; n++) { /* an exec keeps the pid: each image gets its own ring */
        char *p = path, *end = path + sizeof path - 1;
        p = put_str(p, end, dir);
        p = put_str(p, end, "/");
        p = put_num(p, end, (unsigned long)pid);
        p = put_str(p, end, ".");
        p = put_num(p, end, (unsigned long)n);
        p = put_str(p, end, ".ring");
        if (p >= end)
            return;
        *p = 0;
        fd = (int)sys3(SYS_open, path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 && fd != -17) /* -EEXIST: the next number */
            return;
    }
    if (fd < 0)
        return;
    fast_ids_init();
    long map = -1;
    /* fallocate, not ftruncate: every block the ring may touch exists now, or there is no ring at all
     * (the process then runs untouched, and gdb traces it with stops) */
    if (sys6(SYS_fallocate, fd, 0, 0, RING_DATA + RING_BYTES, 0, 0) == 0)
        map = sys6(SYS_mmap, 0, RING_DATA + RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    sys3(SYS_close, fd, 0, 0); /* the mapping stays: no descriptor of ours in the program */
    if (map < 0 && map > -4096) {
        sys3(SYS_unlink, path, 0, 0);
        return;
    }
    struct ring_header *h = (struct ring_header *)map;
    memcpy(h->magic, RING_MAGIC, 8);
    h->version = RING_VERSION;
    h->pid = (uint32_t)pid;
    h->capacity = RING_BYTES;
    h->t0_ns = now_ns();
    h->nspecs = CS_NSPECS;
    h->calls_recorded = CALLS_RECORDED;
    long n = sys3(SYS_readlink, "/proc/self/exe", h->exe, sizeof h->exe - 1);
    h->exe[n > 0 ? n : 0] = 0;
    if (sys3(SYS_getcwd, h->cwd, sizeof h->cwd, 0) <= 0)
        h->cwd[0] = 0;
    g_data = (char *)h + RING_DATA;
    g_ring = h;
    size_t names = 0;
    for (int i = 0; i < CS_NSPECS; i++)
        names += strlen_(cs_specs[i].name) + 1;
    struct rec *r = reserve(REC_SPECS, 0, names, 0);
    if (r) {
        char *p = (char *)(r + 1);
        for (int i = 0; i < CS_NSPECS; i++) {
            size_t l = strlen_(cs_specs[i].name) + 1;
            memcpy(p, cs_specs[i].name, l);
            p += l;
        }
        commit(r);
    }
}

/* ------------------------------------------------------------------ slots ------------- */
#define CALL_SLOTS 256
#define DL_SLOTS 16
enum { SLOT_CALL = 1, SLOT_HOOK = 2 };
enum { SPEC_DLSYM = 0xfff0, SPEC_DLVSYM = 0xfff1 };

struct slot {
    uintptr_t real;     /* the function called */
    uint64_t owner;     /* the link_map that defines it (0: not known) */
    unsigned spec;      /* cs_specs index, or SPEC_DLSYM / SPEC_DLVSYM for a hook */
    unsigned kind;
};

static struct slot g_call[CALL_SLOTS];
static unsigned g_ncall;
static struct slot g_dl[DL_SLOTS]; /* libc's dlsym / dlvsym: jumped to */
static unsigned g_ndl;
static int g_lock;

extern char cs_call_stubs[], cs_dl_stubs[];

static void lock(void)
{
    while (__atomic_exchange_n(&g_lock, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&g_lock, __ATOMIC_RELAXED))
            __builtin_ia32_pause();
}

static void unlock(void)
{
    __atomic_store_n(&g_lock, 0, __ATOMIC_RELEASE);
}

/* The stub for (SPEC, REAL), made once; REAL itself when the slots are used up. */
static uintptr_t slot_for(struct slot *slots, unsigned *count, unsigned max, char *stubs, unsigned spec,
                          unsigned kind, uintptr_t real, uint64_t owner)
{
    if (!real || !g_ring)
        return real;
    uintptr_t stub = 0;
    lock();
    unsigned n = __atomic_load_n(count, __ATOMIC_RELAXED);
    for (unsigned i = 0; i < n; i++)
        if (slots[i].real == real && slots[i].spec == spec && slots[i].kind == kind) {
            stub = (uintptr_t)(stubs + 16 * i);
            break;
        }
    if (!stub && n < max) {
        slots[n] = (struct slot){.real = real, .owner = owner, .spec = spec, .kind = kind};
        __atomic_store_n(count, n + 1, __ATOMIC_RELEASE);
        stub = (uintptr_t)(stubs + 16 * n);
    }
    unlock();
    if (!stub) {
        __atomic_fetch_add(&g_ring->unwrapped, 1, __ATOMIC_RELAXED);
        return real;
    }
    return stub;
}

static int spec_index(const char *name)
{
    if (!name || !((name[0] == 'c' && name[1] == 'u') || (name[0] == 'n' && name[1] == 'v')))
        return -1;
    for (int i = 0; i < CS_NSPECS; i++)
        if (strcmp_(cs_specs[i].name, name) == 0)
            return i;
    return -1;
}

/* The function behind V when V is one of our recording wrappers, else V. An interposer in front
 * of the driver (HAMi-core's way) gets our wrapper from the driver's cuGetProcAddress or from
 * dlsym and hands it on: recorded as is, that pointer "lies in no file" (the recorder is in a
 * namespace of its own), and wrapped again, a call through it would be recorded twice, once as
 * landing nowhere. */
static uintptr_t unstub(uintptr_t v)
{
    uintptr_t base = (uintptr_t)cs_call_stubs;
    if (v < base || v >= base + 16 * CALL_SLOTS || (v - base) % 16)
        return v;
    unsigned n = (unsigned)((v - base) / 16);
    if (n >= __atomic_load_n(&g_ncall, __ATOMIC_ACQUIRE) || g_call[n].kind != SLOT_CALL)
        return v;
    return g_call[n].real;
}

static uintptr_t wrap_spec(int spec, uintptr_t real, uint64_t owner)
{
    if (unstub(real) != real)
        return real; /* already a recording wrapper: one record per call */
    return slot_for(g_call, &g_ncall, CALL_SLOTS, cs_call_stubs, (unsigned)spec, SLOT_CALL, real, owner);
}

static int is_libc(const struct link_map *map)
{
    const char *base = map && map->l_name ? strrchr_(map->l_name, '/') : NULL;
    base = base ? base + 1 : (map ? map->l_name : NULL);
    return base && (strncmp_(base, "libc.so", 7) == 0 || strncmp_(base, "libdl.so", 8) == 0 ||
                    strncmp_(base, "ld-linux", 8) == 0);
}

/* dlsym / dlvsym as bound to REAL, defined in OWNER: libc's is jumped to, anything else (a hook) called. */
static uintptr_t wrap_dl(const char *name, uintptr_t real, const struct link_map *owner)
{
    int v = strcmp_(name, "dlvsym") == 0;
    if (is_libc(owner))
        return slot_for(g_dl, &g_ndl, DL_SLOTS, cs_dl_stubs, v ? SPEC_DLVSYM : SPEC_DLSYM, 0, real,
                        (uint64_t)(uintptr_t)owner);
    return slot_for(g_call, &g_ncall, CALL_SLOTS, cs_call_stubs, v ? SPEC_DLVSYM : SPEC_DLSYM, SLOT_HOOK, real,
                    (uint64_t)(uintptr_t)owner);
}

/* cuGetProcAddress(_v2) answered for SYMBOL: which entry point of ours it is, if any. The driver
 * hands back the variant for the cudaVersion asked: cuGetProcAddress at 12000 is _v2, and a name
 * whose _v2 is ours (cuDeviceTotalMem, asked at 3020 and later) is that _v2. */
static int spec_of_pfn(const char *symbol, int version)
{
    if (!symbol)
        return -1;
    if (strcmp_(symbol, "cuGetProcAddress") == 0)
        return spec_index(version >= 12000 ? "cuGetProcAddress_v2" : "cuGetProcAddress");
    int s = spec_index(symbol);
    if (s >= 0 || version < 3020)
        return s;
    char v2[128];
    size_t n = strnlen_(symbol, sizeof v2 - 4);
    memcpy(v2, symbol, n);
    memcpy(v2 + n, "_v2", 4);
    return spec_index(v2);
}

/* ------------------------------------------------------------ the wrappers ------------ */
typedef uint64_t (*fn6)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);

/* REGS: rdi rsi rdx rcx r8 r9, the slot number, the caller's return address (cs_call_common).
 * Never inlined: gdb's FinishBreakpoint on a traced function's return needs its caller to be a
 * frame of its own (a return address inside an inlined frame never matched its frame id). */
__attribute__((noinline)) static uint64_t call_spec(struct slot *s, uint64_t *regs)
{
    const struct cs_spec *sp = &cs_specs[s->spec];
    uint64_t made = __atomic_add_fetch(&g_ring->calls[s->spec], 1, __ATOMIC_RELAXED);
    int rec = made <= CALLS_RECORDED;
    uint64_t serial = rec ? next_serial() : 0;
    if (rec) {
        size_t payload = 8 * 8;
        for (int i = 0; i < sp->nargs; i++)
            if (sp->kind[i] == CS_STR)
                payload += 2 + cstrlen((const char *)regs[i], 512);
            else if (sp->kind[i] == CS_UUID)
                payload += 2 + (regs[i] ? 16 : 0);
        struct rec *r = reserve(REC_CALL, s->spec, payload, serial);
        if (r) {
            struct out o = {(char *)(r + 1)};
            put64(&o, s->real);
            put64(&o, regs[7]);
            for (int i = 0; i < 6; i++)
                put64(&o, regs[i]);
            for (int i = 0; i < sp->nargs; i++)
                if (sp->kind[i] == CS_STR)
                    putbytes(&o, (const char *)regs[i], cstrlen((const char *)regs[i], 512));
                else if (sp->kind[i] == CS_UUID)
                    putbytes(&o, (const void *)regs[i], regs[i] ? 16 : 0);
            commit(r);
        }
    }
    uint64_t rax = ((fn6)s->real)(regs[0], regs[1], regs[2], regs[3], regs[4], regs[5]);
    uint32_t result = (uint32_t)rax;
    if (rec) {
        /* out-parameters are read only on success (the caller's pointer may be junk otherwise),
         * except cuGetProcAddress_v2's symbolStatus, which says why it failed */
        int gpa2 = strcmp_(sp->name, "cuGetProcAddress_v2") == 0;
        size_t payload = 8;
        const char *rs = sp->result_str ? (const char *)rax : NULL;
        if (sp->result_str)
            payload += 2 + cstrlen(rs, 512);
        for (int i = 0; i < sp->nargs; i++) {
            int want = regs[i] && (result == 0 || (gpa2 && i == 4));
            if (sp->kind[i] == CS_OUT)
                payload += 2 + (want ? sp->size[i] : 0);
            else if (sp->kind[i] == CS_OUTSTR)
                payload += 2 + (want ? cstrlen((const char *)regs[i], 256) : 0);
        }
        struct rec *r = reserve(REC_RETURN, s->spec, payload, serial);
        if (r) {
            struct out o = {(char *)(r + 1)};
            put64(&o, rax);
            if (sp->result_str)
                putbytes(&o, rs, cstrlen(rs, 512));
            for (int i = 0; i < sp->nargs; i++) {
                int want = regs[i] && (result == 0 || (gpa2 && i == 4));
                if (want && i == 1 && sp->kind[i] == CS_OUT && sp->size[i] == 8 &&
                    strncmp_(sp->name, "cuGetProcAddress", 16) == 0) {
                    uintptr_t fn = unstub(*(uintptr_t *)regs[1]); /* the entry point, not our wrapper of it */
                    putbytes(&o, &fn, 8);
                } else if (sp->kind[i] == CS_OUT)
                    putbytes(&o, (const void *)regs[i], want ? sp->size[i] : 0);
                else if (sp->kind[i] == CS_OUTSTR)
                    putbytes(&o, (const void *)regs[i], want ? cstrlen((const char *)regs[i], 256) : 0);
            }
            commit(r);
        }
    }
    /* the entry points cudart takes from cuGetProcAddress: wrappers too (the real one is recorded above) */
    if (result == 0 && regs[1] && strncmp_(sp->name, "cuGetProcAddress", 16) == 0) {
        void **pfn = (void **)regs[1];
        int spec = *pfn ? spec_of_pfn((const char *)regs[0], (int)regs[2]) : -1;
        if (spec >= 0)
            *pfn = (void *)wrap_spec(spec, (uintptr_t)*pfn, 0);
    }
    return rax;
}

static void record_dlsym(unsigned via, unsigned spec, uintptr_t target, uint64_t *regs, uint64_t caller,
                         uint64_t serial)
{
    const char *name = (const char *)regs[1];
    const char *version = spec == SPEC_DLVSYM ? (const char *)regs[2] : NULL;
    size_t nl = cstrlen(name, 512), vl = cstrlen(version, 128);
    struct rec *r = reserve(REC_DLSYM, via, 3 * 8 + 4 + nl + vl, serial);
    if (!r)
        return;
    r->aux = spec == SPEC_DLVSYM;
    struct out o = {(char *)(r + 1)};
    put64(&o, target);
    put64(&o, regs[0]);
    put64(&o, caller);
    putbytes(&o, name, nl);
    putbytes(&o, version, vl);
    commit(r);
}

/* A dlsym that is not libc's: an interposer's hook. Its answer is what the caller gets. */
__attribute__((noinline)) static uint64_t call_hook(struct slot *s, uint64_t *regs)
{
    uint64_t serial = next_serial();
    record_dlsym(SLOT_HOOK, s->spec, s->real, regs, regs[7], serial);
    uint64_t rax = ((fn6)s->real)(regs[0], regs[1], regs[2], regs[3], regs[4], regs[5]);
    struct rec *r = reserve(REC_DLSYM_RET, SLOT_HOOK, 8, serial);
    if (r) {
        struct out o = {(char *)(r + 1)};
        put64(&o, unstub(rax)); /* where the hook's answer leads, through a wrapper of ours it passed on */
        commit(r);
    }
    int spec = rax ? spec_index((const char *)regs[1]) : -1;
    if (spec >= 0)
        rax = wrap_spec(spec, rax, 0);
    return rax;
}

HIDDEN uint64_t cs_dispatch(uint64_t *regs)
{
    struct slot *s = &g_call[regs[6]];
    if (s->kind == SLOT_HOOK)
        return call_hook(s, regs);
    return call_spec(s, regs);
}

/* libc's dlsym / dlvsym, before the jump: REGS rdi rsi rdx, the slot number, the return address. */
HIDDEN uintptr_t cs_dl_entry(uint64_t *regs)
{
    struct slot *s = &g_dl[regs[3]];
    record_dlsym(1, s->spec, s->real, regs, regs[4], 0);
    return s->real;
}

/* An rbp frame gdb (and C++ unwinding) can walk through: the caller's return address at 8(%rbp). */
#define FRAME_ENTER                                                                                     \
    "  .cfi_startproc\n"                                                                                \
    "  pushq %rbp\n"                                                                                    \
    "  .cfi_def_cfa_offset 16\n"                                                                        \
    "  .cfi_offset %rbp, -16\n"                                                                         \
    "  movq %rsp, %rbp\n"                                                                               \
    "  .cfi_def_cfa_register %rbp\n"

/*
 * The stubs: 16 bytes each, so slot N's is stubs + 16 * N. A call stub loads N into r11 (neither
 * an argument register nor preserved) and goes to cs_call_common, which keeps an rbp frame and
 * CFI so that gdb (and C++ unwinding) can walk through it.
 */
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl cs_call_stubs\n"
    ".hidden cs_call_stubs\n"
    "cs_call_stubs:\n"
    ".set cs_i, 0\n"
    ".rept 256\n"
    "  .p2align 4\n"
    "  endbr64\n"
    "  movl $cs_i, %r11d\n"
    "  jmp cs_call_common\n"
    "  .set cs_i, cs_i + 1\n"
    ".endr\n"
    ".p2align 4\n"
    ".globl cs_dl_stubs\n"
    ".hidden cs_dl_stubs\n"
    "cs_dl_stubs:\n"
    ".set cs_j, 0\n"
    ".rept 16\n"
    "  .p2align 4\n"
    "  endbr64\n"
    "  movl $cs_j, %r11d\n"
    "  jmp cs_dl_common\n"
    "  .set cs_j, cs_j + 1\n"
    ".endr\n"
    ".p2align 4\n"
    ".type cs_call_common, @function\n"
    "cs_call_common:\n"
    FRAME_ENTER
    "  subq $64, %rsp\n"
    "  movq %rdi, 0(%rsp)\n"
    "  movq %rsi, 8(%rsp)\n"
    "  movq %rdx, 16(%rsp)\n"
    "  movq %rcx, 24(%rsp)\n"
    "  movq %r8, 32(%rsp)\n"
    "  movq %r9, 40(%rsp)\n"
    "  movq %r11, 48(%rsp)\n"
    "  movq 8(%rbp), %rax\n"
    "  movq %rax, 56(%rsp)\n"
    "  movq %rsp, %rdi\n"
    "  call cs_dispatch\n"
    "  leave\n"
    "  .cfi_def_cfa %rsp, 8\n"
    "  ret\n"
    "  .cfi_endproc\n"
    ".size cs_call_common, .-cs_call_common\n"
    ".p2align 4\n"
    ".type cs_dl_common, @function\n"
    "cs_dl_common:\n"
    FRAME_ENTER
    "  subq $48, %rsp\n"
    "  movq %rdi, 0(%rsp)\n"
    "  movq %rsi, 8(%rsp)\n"
    "  movq %rdx, 16(%rsp)\n"
    "  movq %r11, 24(%rsp)\n"
    "  movq 8(%rbp), %rax\n"
    "  movq %rax, 32(%rsp)\n"
    "  movq %rsp, %rdi\n"
    "  call cs_dl_entry\n"
    "  movq %rax, %r11\n"
    "  movq 0(%rsp), %rdi\n"
    "  movq 8(%rsp), %rsi\n"
    "  movq 16(%rsp), %rdx\n"
    "  leave\n"
    "  .cfi_def_cfa %rsp, 8\n"
    "  jmp *%r11\n" /* libc's dlsym, with the caller's return address on top: it sees its real caller */
    "  .cfi_endproc\n"
    ".size cs_dl_common, .-cs_dl_common\n");

/* ------------------------------------------------------------ rtld-audit -------------- */
EXPORT unsigned int la_version(unsigned int version)
{
    ring_open();
    return version < LAV_CURRENT ? version : LAV_CURRENT;
}

static void put_name(struct out *o, const char *s)
{
    putbytes(o, s, cstrlen(s, 1024));
}

EXPORT unsigned int la_objopen(struct link_map *map, Lmid_t lmid, uintptr_t *cookie)
{
    if (!g_ring)
        return 0; /* inert: ld.so then calls nothing else of ours for this object */
    struct rec *r = reserve(REC_OBJ, 0, 3 * 8 + 2 + cstrlen(map->l_name, 1024), 0);
    if (r) {
        struct out o = {(char *)(r + 1)};
        put64(&o, (uint64_t)(uintptr_t)map);
        put64(&o, (uint64_t)map->l_addr);
        put64(&o, (uint64_t)lmid);
        put_name(&o, map->l_name);
        commit(r);
    }
    return LA_FLG_BINDTO | LA_FLG_BINDFROM;
}

EXPORT unsigned int la_objclose(uintptr_t *cookie)
{
    struct rec *r = reserve(REC_OBJCLOSE, 0, 8, 0);
    if (r) {
        struct out o = {(char *)(r + 1)};
        put64(&o, *cookie);
        commit(r);
    }
    return 0;
}

EXPORT char *la_objsearch(const char *name, uintptr_t *cookie, unsigned int flag)
{
    struct rec *r = reserve(REC_SEARCH, 0, 8 + 2 + cstrlen(name, 1024), 0);
    if (r) {
        r->aux = flag;
        struct out o = {(char *)(r + 1)};
        put64(&o, cookie ? *cookie : 0);
        put_name(&o, name);
        commit(r);
    }
    return (char *)name;
}

static int cudaish(const char *name)
{
    return name && ((name[0] == 'c' && name[1] == 'u') || strncmp_(name, "nvml", 4) == 0);
}

EXPORT uintptr_t la_symbind64(Elf64_Sym *sym, unsigned int ndx, uintptr_t *refcook, uintptr_t *defcook,
                              unsigned int *flags, const char *symname)
{
    uintptr_t value = sym->st_value, out = value;
    const struct link_map *owner = defcook ? (const struct link_map *)*defcook : NULL;
    int dl = symname && (strcmp_(symname, "dlsym") == 0 || strcmp_(symname, "dlvsym") == 0);
    int spec = dl ? -1 : spec_index(symname);
    if (spec >= 0)
        out = wrap_spec(spec, value, (uint64_t)(uintptr_t)owner);
    else if (dl)
        out = wrap_dl(symname, value, owner);
    if ((*flags & LA_SYMB_DLSYM) || dl || cudaish(symname)) {
        size_t nl = cstrlen(symname, 512);
        struct rec *r = reserve(REC_BIND, spec >= 0 ? (unsigned)spec : 0xffff, 4 * 8 + 2 + nl, 0);
        if (r) {
            r->aux = *flags;
            struct out o = {(char *)(r + 1)};
            put64(&o, refcook ? *refcook : 0);
            put64(&o, defcook ? *defcook : 0);
            put64(&o, value);
            put64(&o, out);
            putbytes(&o, symname, nl);
            commit(r);
        }
    }
    return out;
}
