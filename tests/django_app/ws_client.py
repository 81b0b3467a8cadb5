"""A WebSocket client driven line by line on stdin, for the proxy tests:
  open NAME URL   connect a socket called NAME
  send NAME TEXT  send TEXT on it and print the reply
  close NAME      close it
Each command prints one line: `ok`, the reply, or `error: ...`."""
import asyncio
import sys

import websockets


async def main():
    sockets = {}
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd, name, *rest = line.strip().split(" ", 2)
        try:
            if cmd == "open":
                sockets[name] = await websockets.connect(rest[0])
                print("ok", flush=True)
            elif cmd == "send":
                await sockets[name].send(rest[0])
                print(await asyncio.wait_for(sockets[name].recv(), 10), flush=True)
            elif cmd == "close":
                await sockets.pop(name).close()
                print("ok", flush=True)
        except Exception as e:  # the test reads the reason
            print(f"error: {e!r}", flush=True)


asyncio.run(main())
