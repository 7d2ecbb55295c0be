/* Test 7: a process holding a socket, which cannot be checkpointed; it counts
 * into FILE so the test sees it keep running. */
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    FILE *out = fopen(argv[1], "w");
    for (long i = 1;; i++) { fprintf(out, "%ld\n", i); fflush(out); usleep(10000); }
}
