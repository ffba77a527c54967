/* forkn N PROGRAM [ARGS...]: N children at once, each exec'ing PROGRAM; waits for them all (a parent
 * starting many workers: 20 at once once made gdb's continue fail on a return breakpoint). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: forkn N PROGRAM [ARGS...]\n"); return 2; }
    int n = atoi(argv[1]);
    for (int i = 0; i < n; i++) if (fork() == 0) { execv(argv[2], argv + 2); _exit(127); }
    while (wait(NULL) > 0) ;
    return 0;
}
