"""HTTP and WebSocket: a daebus service against a bare aiohttp app, side by side.

    python bench/web.py            # about a minute
    python bench/web.py --quick    # a few seconds per variant

Two server processes do the same work: the daebus service (``DaebusHttp`` and
``DaebusWebSocket`` attached to a ``Daebus`` app on a private Valkey) and a bare aiohttp
app written here. The load comes from this process: aiohttp clients on keep-alive
connections, each sending its next request as soon as the previous answer arrived.

HTTP: ``GET /echo?n=...`` answered with ``{"n": ...}`` as JSON, by an ``async def`` and
by a plain ``def`` route (the bare app runs the ``def`` one in its default executor,
as a hand-written aiohttp app would). WebSocket: ``{"type": "echo", "data": {...}}``
answered with ``{"type": "response", "data": {...}}``. Variants take turns in rounds
and their counts are pooled; the ratios compare figures of the same run. Never use
these numbers as timed assertions in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from daebus.server import EmbeddedServer

DAEBUS_SERVICE = """
import sys
from daebus import Daebus, DaebusHttp, DaebusWebSocket, request

app = Daebus("web-bench")
app.attach(DaebusHttp(port=int(sys.argv[2]), host="127.0.0.1"))
app.attach(DaebusWebSocket(port=int(sys.argv[3])))

@app.route("/echo")
async def echo(req):
    return {"n": req.query.get("n")}

@app.route("/echo_sync")
def echo_sync(req):
    return {"n": req.query.get("n")}

@app.socket("echo")
async def ws_echo(data, client_id):
    return data

@app.socket("echo_sync")
def ws_echo_sync(data, client_id):
    return data

app.run(service="web-bench", redis_url=sys.argv[1])
"""

BARE_SERVICE = """
import asyncio, json, sys
from aiohttp import web

async def echo(request):
    return web.json_response({"n": request.query.get("n")})

def _echo_sync(query):
    return {"n": query.get("n")}

async def echo_sync(request):
    loop = asyncio.get_running_loop()
    return web.json_response(await loop.run_in_executor(None, _echo_sync, request.query))

async def ws(request):
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    loop = asyncio.get_running_loop()
    async for message in socket:
        frame = json.loads(message.data)
        data = frame.get("data")
        if frame.get("type") == "echo_sync":
            data = await loop.run_in_executor(None, lambda: data)
        await socket.send_str(json.dumps({"type": "response", "data": data}))
    return socket

http = web.Application()
http.router.add_get("/echo", echo)
http.router.add_get("/echo_sync", echo_sync)
sockets = web.Application()
sockets.router.add_get("/{tail:.*}", ws)

async def main():
    runners = []
    for application, port in ((http, int(sys.argv[2])), (sockets, int(sys.argv[3]))):
        runner = web.AppRunner(application, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    http_port: int
    ws_port: int
    process: subprocess.Popen[bytes]


@dataclass
class Tally:
    count: int = 0
    seconds: float = 0.0
    errors: int = 0
    samples: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def _start(name: str, code: str, url: str) -> Server:
    http_port, ws_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", code, url, str(http_port), str(ws_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return Server(name, http_port, ws_port, process)


async def _wait_ready(server: Server, deadline: float) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{server.http_port}/echo?n=0") as r:
                    if r.status == 200:
                        async with session.ws_connect(f"ws://127.0.0.1:{server.ws_port}/"):
                            return
            except aiohttp.ClientError:
                pass
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} server did not start")
            await asyncio.sleep(0.1)


Load = Callable[[Server, str, int, float], Awaitable[tuple[int, int]]]


async def http_load(server: Server, path: str, clients: int, seconds: float) -> tuple[int, int]:
    """Requests answered and errors, ``clients`` connections for ``seconds``."""
    done = errors = 0
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal done, errors
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                url = f"http://127.0.0.1:{server.http_port}{path}?n={n}"
                async with session.get(url) as response:
                    body = await response.json()
                if response.status == 200 and body == {"n": str(n)}:
                    done += 1
                else:
                    errors += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return done, errors


async def ws_load(server: Server, kind: str, clients: int, seconds: float) -> tuple[int, int]:
    """Messages answered and errors, ``clients`` sockets for ``seconds``."""
    done = errors = 0
    stop_at = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            nonlocal done, errors
            async with session.ws_connect(f"ws://127.0.0.1:{server.ws_port}/") as ws:
                n = 0
                while time.monotonic() < stop_at:
                    n += 1
                    await ws.send_json({"type": kind, "data": {"n": n}})
                    reply = await ws.receive_json(timeout=10)
                    if reply == {"type": "response", "data": {"n": n}}:
                        done += 1
                    else:
                        errors += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return done, errors


async def run(url: str, rounds: int, seconds: float) -> None:
    servers = [_start("daebus", DAEBUS_SERVICE, url), _start("bare aiohttp", BARE_SERVICE, url)]
    try:
        deadline = time.monotonic() + 30
        for server in servers:
            await _wait_ready(server, deadline)
        scenarios: list[tuple[str, Load, str, int]] = [
            ("HTTP GET, async def route", http_load, "/echo", 16),
            ("HTTP GET, def route", http_load, "/echo_sync", 16),
            ("WebSocket, async def handler", ws_load, "echo", 16),
            ("WebSocket, def handler", ws_load, "echo_sync", 16),
        ]
        print(f"{'scenario':32} {'clients':>7} {'server':>14} {'per s':>9} {'errors':>6}  vs bare")
        for title, load, what, clients in scenarios:
            tallies = {server.name: Tally() for server in servers}
            for server in servers:  # warm-up, untimed
                await load(server, what, clients, min(1.0, seconds / 2))
            for turn in range(rounds):
                order = servers if turn % 2 == 0 else servers[::-1]
                for server in order:
                    began = time.monotonic()
                    count, errors = await load(server, what, clients, seconds)
                    tally = tallies[server.name]
                    tally.count += count
                    tally.errors += errors
                    tally.seconds += time.monotonic() - began
            bare = tallies["bare aiohttp"].rate
            for server in servers:
                tally = tallies[server.name]
                ratio = f"{tally.rate / bare:.2f}x" if bare else "-"
                print(
                    f"{title:32} {clients:>7} {server.name:>14} {tally.rate:>9,.0f}"
                    f" {tally.errors:>6}  {ratio}"
                )
    finally:
        for server in servers:
            if server.process.poll() is None:
                os.killpg(server.process.pid, signal.SIGTERM)
        for server in servers:
            try:
                server.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(server.process.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/web.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter turns, fewer rounds")
    args = parser.parse_args()
    rounds, seconds = (2, 1.5) if args.quick else (3, 4.0)
    with EmbeddedServer() as server:
        asyncio.run(run(server.url, rounds, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
