# A NETLINK_ROUTE socket in the link group (as glibc and network tools use it),
# or with argv[2] == "packet", a packet socket (which is refused).
import socket, struct, sys
from common import say, wait_for

if sys.argv[2] == "packet":
    p = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    say("ready"); wait_for("go"); say("done"); sys.exit(0)
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
s.bind((0, 1))  # RTMGRP_LINK
say("ready"); wait_for("go")
say("groups", s.getsockname()[1])
RTM_GETLINK, NLM_F_REQUEST, NLM_F_DUMP = 18, 1, 0x300
s.send(struct.pack("=LHHLL", 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + bytes(16))
links, done = 0, False
while not done:
    data = s.recv(65536); off = 0
    while off < len(data):
        ln, kind = struct.unpack_from("=LH", data, off)
        if kind == 3:
            done = True
        elif kind == 16:
            links += 1
        off += (ln + 3) & ~3
say("links", links > 0)
say("done")
