# A TCP connection in the middle of closing: the client sent its request and
# shut its writing (FIN-WAIT-2), the server has not read it yet (CLOSE-WAIT).
import os, socket, sys, time
from common import say, wait_for

l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname())
s, _ = l.accept()
c.sendall(b"request"); c.shutdown(socket.SHUT_WR)
time.sleep(0.2)
say("states", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0],
    c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0])
say("ready"); wait_for("go")
say("server", s.recv(100), s.recv(100))
s.sendall(b"response"); s.close()
c.settimeout(10)
say("client", c.recv(100), c.recv(100))
say("done")
