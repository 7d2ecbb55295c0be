# A datagram socket connected to a log socket outside the application.
import socket, sys
from common import say, wait_for

s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect(sys.argv[2])
s.send(b"<14>before")
say("ready"); wait_for("go")
s.send(b"<14>after")
say("done")
