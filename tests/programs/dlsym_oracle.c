/*
 * dlsym_oracle: what glibc's dlsym() really answers, for testing the symbol-table model.
 *
 *   dlsym_oracle LIBRARY < names
 *
 * dlopen()s LIBRARY (RTLD_LAZY | RTLD_LOCAL), prints "1 NAME" or "0 NAME" for each name
 * read from stdin (dlsym on the handle; 1 when the result is not NULL), then "maps PATH"
 * for every file mapped into the process, so the test can rebuild the handle's search list.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: dlsym_oracle LIBRARY < names\n");
        return 2;
    }
    void *handle = dlopen(argv[1], RTLD_LAZY | RTLD_LOCAL);
    if (!handle) {
        fprintf(stderr, "dlsym_oracle: %s\n", dlerror());
        return 3;
    }
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0])
            continue;
        dlerror();
        void *p = dlsym(handle, line);
        printf("%d %s\n", p != NULL || dlerror() == NULL, line);
    }
    FILE *maps = fopen("/proc/self/maps", "r");
    while (maps && fgets(line, sizeof line, maps)) {
        char *path = strchr(line, '/');
        if (path) {
            path[strcspn(path, "\n")] = 0;
            printf("maps %s\n", path);
        }
    }
    return 0;
}
