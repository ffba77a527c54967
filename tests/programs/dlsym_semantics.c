/*
 * dlsym_semantics: what dlsym answers where the caller matters (RTLD_NEXT, RTLD_DEFAULT, a
 * local handle, dlvsym), printed as the file and symbol each answer lands on. The in-process
 * recorder jumps into libc's dlsym with the caller's own return address on the stack: the
 * test runs this with and without it and wants the same lines.
 *
 *   dlsym_semantics [LIBRARY]    (default libm.so.6, opened RTLD_LOCAL)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

static void show(const char *what, void *p)
{
    Dl_info info;
    if (!p) {
        printf("%s NULL\n", what);
    } else if (dladdr(p, &info) && info.dli_fname) {
        const char *base = strrchr(info.dli_fname, '/');
        printf("%s %s %s\n", what, base ? base + 1 : info.dli_fname, info.dli_sname ? info.dli_sname : "?");
    } else {
        printf("%s unnamed\n", what);
    }
}

int main(int argc, char **argv)
{
    void *h = dlopen(argc > 1 ? argv[1] : "libm.so.6", RTLD_NOW | RTLD_LOCAL);
    show("next malloc", dlsym(RTLD_NEXT, "malloc"));
    show("default printf", dlsym(RTLD_DEFAULT, "printf"));
    show("default missing", dlsym(RTLD_DEFAULT, "no_such_symbol_anywhere"));
    show("default cos (a local library)", dlsym(RTLD_DEFAULT, "cos"));
    show("handle cos", h ? dlsym(h, "cos") : NULL);
    show("handle missing", h ? dlsym(h, "no_such_symbol_anywhere") : NULL);
    show("dlvsym memcpy", dlvsym(RTLD_DEFAULT, "memcpy", "GLIBC_2.14"));
    /* the real dlsym, as an interposer takes it (the recorder hands back its jump to it: a
     * different address, the same answers) */
    void *(*real)(void *, const char *) = (void *(*)(void *, const char *))dlsym(RTLD_NEXT, "dlsym");
    show("next dlsym, then RTLD_NEXT malloc", real ? real(RTLD_NEXT, "malloc") : NULL);
    show("next dlsym, then handle cos", real && h ? real(h, "cos") : NULL);
    return 0;
}
