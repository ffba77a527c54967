/*
 * spawner: a parent like ollama's server. It starts the probe as a child with
 * vfork+exec (Go's os/exec uses clone(CLONE_VFORK)), throws the child's stderr
 * away, and logs only a summary line, as ollama does.
 *
 *   spawner PROBE [ARGS...]
 *
 * SPAWNER_DELAY=S waits S seconds before starting the child and SPAWNER_LINGER=S
 * stays S seconds after it (a long-running server, for attach tests).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: spawner PROBE [ARGS...]\n");
        return 2;
    }
    const char *delay = getenv("SPAWNER_DELAY");
    if (delay)
        sleep((unsigned)atoi(delay));
    pid_t pid = vfork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        execv(argv[1], argv + 1);
        _exit(127);
    }
    if (pid < 0) {
        perror("spawner: vfork");
        return 2;
    }
    int status = 0;
    waitpid(pid, &status, 0);
    int devices = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
    if (devices > 0 && devices < 64)
        printf("msg=\"inference compute\" id=0 library=cuda devices=%d\n", devices);
    else
        printf("msg=\"inference compute\" id=cpu library=cpu compute=\"\" name=cpu total_vram=\"0 B\"\n");
    fflush(stdout);
    const char *linger = getenv("SPAWNER_LINGER");
    if (linger)
        sleep((unsigned)atoi(linger));
    return 0;
}
