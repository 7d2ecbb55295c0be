# An asyncio echo server and its client in one process (epoll, TCP): the
# client numbers its requests and checks every answer; OUT gets one line per
# answered request.
import asyncio, sys


async def handle(r, w):
    while True:
        line = await r.readline()
        if not line:
            break
        w.write(b"echo " + line)
        await w.drain()


async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    r, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
    i = 0
    while True:
        w.write(b"%d\n" % i)
        await w.drain()
        if await r.readline() != b"echo %d\n" % i:
            sys.exit(3)
        with open(sys.argv[1], "a") as f:
            f.write(f"{i}\n")
        i += 1
        await asyncio.sleep(0.005)


asyncio.run(main())
