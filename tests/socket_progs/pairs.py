# Parent and child over a stream, a datagram and a seqpacket pair, data in
# flight both ways and a pipe end in flight with SCM_RIGHTS.
import array, os, socket, sys
from common import say, wait_for

a, b = socket.socketpair()
da, db = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
ha, hb = socket.socketpair()          # half closed: hb shuts its writing
r, w = os.pipe()
os.write(w, b"through the pipe")
pid = os.fork()
if pid == 0:
    a.close(); da.close(); sa.close()
    b.sendall(b"child->parent stream")
    db.send(b"dgram1"); db.send(b"dgram2")
    sb.send(b"seq1"); sb.send(b"seq2")
    b.sendmsg([b"with-fd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
    ha.close(); hb.sendall(b"last words"); hb.shutdown(socket.SHUT_WR)
    say("child ready")
    wait_for("go")
    say("child", b.recv(100), db.recv(100), db.recv(100), sb.recv(100))
    say("child half", hb.recv(100))
    b.setblocking(False); db.setblocking(False)
    for s in (b, db):
        try:
            say("child extra", s.recv(100))
        except BlockingIOError:
            say("child nothing more")
    sys.exit(0)
b.close(); db.close(); sb.close(); os.close(r); hb.close()
ha.sendall(b"to the half-closed")
a.sendall(b"parent->child stream"); da.send(b"pd1"); da.send(b"pd2"); sa.send(b"ps1")
say("parent ready")
wait_for("go")
say("parent", a.recv(20), da.recv(100), da.recv(100), sa.recv(100), sa.recv(100))
msg, anc, flags, addr = a.recvmsg(100, socket.CMSG_LEN(4))
fd = array.array("i", anc[0][2][:4])[0]
say("parent", msg, os.read(fd, 100))
say("parent half", ha.recv(100), ha.recv(100))
os.wait()
say("done")
