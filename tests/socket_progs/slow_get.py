# Downloads URL slowly (a client outside the application), reporting progress;
# prints the SHA-256 of what it got and whether the connection ever failed.
import hashlib, socket, sys, time

out, host, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


def say(*w):
    with open(out, "a") as f:
        f.write(" ".join(str(x) for x in w) + "\n")


for _ in range(1000):
    try:
        s = socket.create_connection((host, port)); break
    except OSError:
        time.sleep(0.02)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.sendall(b"GET /%s HTTP/1.0\r\nHost: x\r\n\r\n" % path.encode())
data = b""
try:
    while True:
        d = s.recv(16384)
        if not d:
            break
        data += d
        if len(data) > 1 << 20:
            say("started")
        time.sleep(0.002)
except OSError as e:
    say("error", e)
body = data.split(b"\r\n\r\n", 1)[1]
say("got", len(body), hashlib.sha256(body).hexdigest())
