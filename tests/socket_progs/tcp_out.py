# A TCP client of a server outside the application.
import socket, sys
from common import say, wait_for

c = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
c.sendall(b"hello")
say("ready"); wait_for("go")
try:
    say("recv", c.recv(100))
except OSError as e:
    say("recv error", e.errno)
say("done")
