# A Unix stream connected to a server outside the application.
import socket, sys
from common import say, wait_for

s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[2])
say("ready"); wait_for("go")
say("read", s.recv(100))
try:
    s.sendall(b"x" * 100000); say("write ok")
except OSError as e:
    say("write", e.errno)
say("done")
