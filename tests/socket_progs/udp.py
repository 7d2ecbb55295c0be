# A UDP receiver with datagrams queued from two senders, one connected.
import socket, sys
from common import say, wait_for

fam = socket.AF_INET6 if sys.argv[2] == "6" else socket.AF_INET
host = "::1" if fam == socket.AF_INET6 else "127.0.0.1"
r = socket.socket(fam, socket.SOCK_DGRAM); r.bind((host, 0))
s1 = socket.socket(fam, socket.SOCK_DGRAM); s1.bind((host, 0)); s1.connect(r.getsockname())
s2 = socket.socket(fam, socket.SOCK_DGRAM)
for i in range(5):
    s1.send(b"one-%d" % i)
    s2.sendto(b"two-%d" % i, r.getsockname())
say("ready")
wait_for("go")
got = [r.recvfrom(100) for _ in range(10)]
say("order", [g[0].decode() for g in got])
say("senders", all(a[:2] == s1.getsockname()[:2] for d, a in got if d.startswith(b"one")))
r.setblocking(False)
try:
    r.recv(100); say("extra")
except BlockingIOError:
    say("nothing more")
s1.send(b"after"); say("after", r.recv(100) if not r.setblocking(True) else None)
say("done")
