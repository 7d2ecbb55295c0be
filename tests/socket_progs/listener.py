# A Unix server with a listener at a path and one with an abstract name, two
# clients connected and accepted, and one connected but not yet accepted.
import os, socket, sys
from common import say, wait_for

path, abstract = sys.argv[2], "\0" + sys.argv[3]
lp = socket.socket(socket.AF_UNIX); lp.bind(path); lp.listen(4)
la = socket.socket(socket.AF_UNIX); la.bind(abstract); la.listen(4)
c1 = socket.socket(socket.AF_UNIX); c1.connect(path)
c2 = socket.socket(socket.AF_UNIX); c2.connect(abstract)
s1, _ = lp.accept(); s2, _ = la.accept()
c3 = socket.socket(socket.AF_UNIX); c3.connect(path)   # waits for accept
c1.sendall(b"from c1"); s2.sendall(b"to c2")
gone = path + ".gone"                  # a datagram socket whose name was deleted
ld = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); ld.bind(gone)
cd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); cd.connect(gone)
os.unlink(gone); cd.send(b"x")
say("ready")
wait_for("go")
say("s1", s1.recv(100), "c2", c2.recv(100))
s3, _ = lp.accept()
c3.sendall(b"late"); say("s3", s3.recv(100))
c4 = socket.socket(socket.AF_UNIX); c4.connect(abstract)
s4, _ = la.accept(); s4.sendall(b"new"); say("c4", c4.recv(100))
say("peer", c1.getpeername())
cd.send(b"y"); say("deleted", ld.recv(10), ld.recv(10), ld.getsockname() == gone, os.path.exists(gone))
say("done")
