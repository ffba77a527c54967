/*
 * probe: loads libggml-cuda the way a ggml program (ollama's runner, llama-server)
 * does, and asks for the CUDA device count, which runs ggml_cuda_init.
 *
 *   probe [--lib PATH] [--pre N] [--post N] [--raw-log] [--exit-count]
 *         [--fork | --fork-after-load] [--reload]
 *
 * --lib       libggml-cuda to load (default: $GGML_CUDA_LIB)
 * --pre/post  write N log lines to stderr before/after the init (benchmarks)
 * --raw-log   route ggml's log through a raw `syscall` instruction, as Go does
 * --exit-count  exit with the device count (for the spawner); default exit 0
 * --fork      do the load and the init in a forked child (no exec), as a
 *             multiprocessing worker does; the parent waits and exits with its status
 * --fork-after-load  load in the parent, init in a forked child
 * --reload    load, dlclose, and load again before the init (ollama tries
 *             several backend builds one after another)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int (*count_fn)(void);
typedef void (*log_cb)(int level, const char *text, void *user);
typedef void (*log_set_fn)(log_cb cb, void *user);

/* write(2) without libc: the `syscall` instruction itself. */
static long raw_write(int fd, const void *buf, unsigned long len)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"((long)SYS_write), "D"((long)fd), "S"(buf), "d"(len)
                     : "rcx", "r11", "memory");
    return ret;
}

static void raw_log(int level, const char *text, void *user)
{
    (void)level;
    (void)user;
    raw_write(2, text, strlen(text));
}

static void chatter(const char *phase, long n)
{
    for (long i = 0; i < n; i++)
        fprintf(stderr, "probe: %s log line %ld of %ld\n", phase, i + 1, n);
}

/* In the parent: wait for the child and exit with its status. Returns in the child. */
static void fork_here(void)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("probe: fork");
        exit(2);
    }
    if (pid > 0) {
        int status = 0;
        waitpid(pid, &status, 0);
        exit(WIFEXITED(status) ? WEXITSTATUS(status) : 2);
    }
}

int main(int argc, char **argv)
{
    const char *lib = getenv("GGML_CUDA_LIB");
    long pre = 0, post = 0;
    int raw = 0, exit_count = 0, fork_mode = 0, reload = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--lib") && i + 1 < argc)
            lib = argv[++i];
        else if (!strcmp(argv[i], "--pre") && i + 1 < argc)
            pre = atol(argv[++i]);
        else if (!strcmp(argv[i], "--post") && i + 1 < argc)
            post = atol(argv[++i]);
        else if (!strcmp(argv[i], "--raw-log"))
            raw = 1;
        else if (!strcmp(argv[i], "--exit-count"))
            exit_count = 1;
        else if (!strcmp(argv[i], "--fork"))
            fork_mode = 1;
        else if (!strcmp(argv[i], "--fork-after-load"))
            fork_mode = 2;
        else if (!strcmp(argv[i], "--reload"))
            reload = 1;
        else {
            fprintf(stderr, "probe: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!lib) {
        fprintf(stderr, "probe: no library: pass --lib PATH or set GGML_CUDA_LIB\n");
        return 2;
    }
    chatter("pre", pre);
    if (fork_mode == 1)
        fork_here();

    void *handle = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (handle && reload) {
        dlclose(handle);
        handle = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    }
    if (!handle) {
        /* ggml-backend-reg.cpp logs the same way */
        fprintf(stderr, "load_backend: failed to load %s: %s\n", lib, dlerror());
        chatter("post", post);
        return exit_count ? 0 : 3;
    }
    if (raw) {
        log_set_fn log_set = (log_set_fn)dlsym(RTLD_DEFAULT, "ggml_log_set");
        if (!log_set) {
            void *base = dlopen(NULL, RTLD_NOW);
            log_set = base ? (log_set_fn)dlsym(base, "ggml_log_set") : NULL;
        }
        if (!log_set) {
            /* ggml-base is a dependency of libggml-cuda: look it up there */
            log_set = (log_set_fn)dlsym(handle, "ggml_log_set");
        }
        if (log_set)
            log_set(raw_log, NULL);
    }
    if (fork_mode == 2)
        fork_here();
    count_fn count = (count_fn)dlsym(handle, "ggml_backend_cuda_get_device_count");
    if (!count) {
        fprintf(stderr, "probe: %s has no ggml_backend_cuda_get_device_count\n", lib);
        return 2;
    }
    int n = count();
    printf("probe: cuda devices: %d\n", n);
    fflush(stdout);
    chatter("post", post);
    return exit_count ? n : 0;
}
