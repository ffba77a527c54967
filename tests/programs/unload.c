/*
 * unload: dlopen FIRST, dlclose it, dlopen SECOND, then call unload_done().
 * With address randomisation off (gdb's default) SECOND is mapped where FIRST was:
 * a breakpoint placed in FIRST must not come back to life inside SECOND.
 *
 *   unload FIRST SECOND
 */
#include <dlfcn.h>
#include <stdio.h>

__attribute__((noinline)) void unload_done(void *second)
{
    __asm__ volatile("" ::"r"(second) : "memory");
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: unload FIRST SECOND\n");
        return 2;
    }
    void *first = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!first) {
        fprintf(stderr, "unload: %s\n", dlerror());
        return 2;
    }
    dlclose(first);
    void *second = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
    if (!second) {
        fprintf(stderr, "unload: %s\n", dlerror());
        return 2;
    }
    unload_done(second);
    return 0;
}
