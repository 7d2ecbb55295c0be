# Two processes joined by TCP, 1 MiB unread in each direction.
import os, socket, sys, time
from common import blob, say, wait_for

N = 1 << 20
fam = socket.AF_INET6 if sys.argv[2] == "6" else socket.AF_INET
host = "::1" if fam == socket.AF_INET6 else "127.0.0.1"
l = socket.socket(fam); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((host, 0)); l.listen(5)


def push(s, data):
    s.setblocking(False); sent = 0
    while sent < len(data):
        try:
            sent += s.send(data[sent:])
        except BlockingIOError:
            time.sleep(0.01)


def pull(s, n):
    s.setblocking(True); got = b""
    while len(got) < n:
        d = s.recv(min(65536, n - len(got)))  # not into what follows
        if not d:
            break
        got += d
    return got


pid = os.fork()
if pid == 0:
    c = socket.create_connection(l.getsockname()[:2])
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    push(c, blob(b"client-to-server;", N))
    say("client ready"); wait_for("go")
    say("client", pull(c, N) == blob(b"server-to-client:", N),
        c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    c.sendall(b"bye"); sys.exit(0)
s, _ = l.accept()
push(s, blob(b"server-to-client:", N))
say("server ready"); wait_for("go")
say("server", pull(s, N) == blob(b"client-to-server;", N))
say("server", pull(s, 3))
os.wait(); say("done")
