# A TCP client whose server answered and closed its socket (HTTP/1.0 style):
# the client has not read the answer yet (CLOSE-WAIT), the server's end is gone.
import socket, time
from common import say, wait_for

l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname())
s, _ = l.accept()
s.sendall(b"answer"); s.close()
time.sleep(0.2)
say("state", c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0])
say("ready"); wait_for("go")
say("client", c.recv(100), c.recv(100))
say("done")
