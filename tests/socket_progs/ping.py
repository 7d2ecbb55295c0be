# A ping socket (ICMP echo without a raw socket) to the loopback.
import socket, struct
from common import say, wait_for

open("/proc/sys/net/ipv4/ping_group_range", "w").write("0 2147483647")
p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
p.connect(("127.0.0.1", 0))


def echo(seq):
    p.send(struct.pack("!BBHHH", 8, 0, 0, 0, seq) + b"xos")
    reply = p.recv(100)
    return reply[0], struct.unpack("!H", reply[6:8])[0], reply[8:]


say("before", *echo(1))
ident = p.getsockname()[1]
say("ready"); wait_for("go")
say("after", *echo(2))
say("same ident", p.getsockname()[1] == ident)
say("done")
