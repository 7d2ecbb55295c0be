# A redis client in the middle of a pipelined exchange with redis-server.
import socket, time
from common import say, wait_for

for _ in range(500):
    try:
        c = socket.create_connection(("127.0.0.1", 6379)); break
    except OSError:
        time.sleep(0.02)
N = 2000
c.sendall(b"".join(b"SET k%d v%d\r\n" % (i, i) for i in range(N)))
f = c.makefile("rb")
first = [f.readline() for _ in range(N // 2)]
say("ready")
wait_for("go")
rest = [f.readline() for _ in range(N - N // 2)]
say("replies", all(r == b"+OK\r\n" for r in first + rest))
c.sendall(b"GET k1999\r\nDBSIZE\r\n")
say("get", f.readline(), f.readline(), "dbsize", f.readline())
say("done")
