/* Test 7: a process holding a packet socket (protocol 0: it receives nothing),
 * which cannot be checkpointed; it counts into FILE so the test sees it keep
 * running. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (socket(AF_PACKET, SOCK_RAW, 0) < 0) { perror("socket"); return 1; }
    FILE *out = fopen(argv[1], "w");
    for (long i = 1;; i++) { fprintf(out, "%ld\n", i); fflush(out); usleep(10000); }
}
