/*
 * sigwaiter: a program that blocks SIGINT and takes it with sigwait() in a thread, as
 * servers do for a clean shutdown. A tool that stops it with SIGINT would be obeyed
 * ("GOT SIGINT", exit 42) or ignored; gdb-cudashim must end it at --timeout anyway,
 * without it ever receiving the tool's signal.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void *waiter(void *arg)
{
    sigset_t *set = arg;
    int sig;
    if (sigwait(set, &sig) == 0) {
        printf("GOT SIGNAL %d\n", sig);
        fflush(stdout);
        exit(42);
    }
    return NULL;
}

int main(void)
{
    static sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    pthread_t t;
    pthread_create(&t, NULL, waiter, &set);
    printf("sigwaiter %d ready\n", (int)getpid());
    fflush(stdout);
    for (;;)
        pause();
}
