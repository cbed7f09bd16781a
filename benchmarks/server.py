"""HTTP service throughput: /v1/embeddings with 1, 8 and 32 concurrent clients against the library's ``encode``.

The server (``embedsmith serve``) runs in its own process; the load generator runs in this one, as a minimal
asyncio HTTP/1.1 keep-alive client (so the figures are the server's, not an HTTP library's). Request shapes
(``--shapes``): ``1`` sentence per request (how applications embed queries), ``8`` per request, and ``1-8``
(a random mix). The same request list is sent at every concurrency. The library figure is ``encode`` on
exactly those sentences, in one call, in a separate process with the same thread count, measured in the
same run while the server is idle. Also reported: p50/p99 latency per concurrency and the p50 of
single-sentence requests on an idle server.

    python benchmarks/server.py --requests 600 --threads 2 --repeats 3

Targets (issue 16), 32 clients: 1 sentence per request >= 0.6x the library (floor 0.45x), 8 per request
>= 0.9x (floor 0.8x); idle single-sentence p50 <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode import load_sentences


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_requests(n: int, pool: list[str], seed: int, shape: str) -> list[list[str]]:
    """``n`` requests of ``shape`` sentences: a count ('1', '8') or a range ('1-8')."""
    rng = random.Random(seed)
    low, _, high = shape.partition("-")
    return [rng.sample(pool, rng.randint(int(low), int(high or low))) for _ in range(n)]


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the answer (Content-Length framed)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, host)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def load(host: str, port: int, requests: list[list[str]], clients: int, fmt: str
               ) -> tuple[float, list[float], int]:
    """Send ``requests`` from ``clients`` concurrent connections. Returns (seconds, latencies, errors)."""
    bodies = [json.dumps({"input": r, "model": "minilm", "encoding_format": fmt}).encode() for r in requests]
    conns = [await Connection.open(host, port) for _ in range(clients)]
    queue = iter(range(len(bodies)))
    latencies: list[float] = []
    errors = 0

    async def client(conn: Connection) -> None:
        nonlocal errors
        for i in queue:
            t = time.perf_counter()
            status, _ = await conn.post("/v1/embeddings", bodies[i])
            latencies.append(time.perf_counter() - t)
            errors += status != 200

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return elapsed, latencies, errors


def library_rate(texts: list[str], threads: int, repeats: int) -> float:
    """Sentences/s of the library's encode on ``texts``, in a fresh process (median of ``repeats`` after warm-up)."""
    code = (
        "import json, statistics, sys, time\n"
        "from embedsmith import load_encoder\n"
        "texts = json.load(sys.stdin)\n"
        f"enc = load_encoder('minilm', backend='onnx', device='cpu', threads={threads})\n"
        "enc.encode(texts[:256])\n"
        "runs = []\n"
        f"for _ in range({repeats}):\n"
        "    t = time.perf_counter(); enc.encode(texts); runs.append(time.perf_counter() - t)\n"
        "print(len(texts) / statistics.median(runs))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600, help="requests per concurrency level")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels")
    parser.add_argument("--threads", type=int, default=2, help="encoder threads (server and library)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--idle", type=int, default=200, help="single-sentence requests on the idle server")
    parser.add_argument("--format", choices=["float", "base64"], default="float", help="encoding_format")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shapes", default="1,8,1-8", help="sentences per request: counts or ranges")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="encoder threads per server worker (default: --threads / --workers)")
    args = parser.parse_args()

    pool = load_sentences(3000)
    levels = [int(x) for x in args.clients.split(",")]
    host, port = "127.0.0.1", free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "embedsmith.cli", "serve", "--host", host, "--port", str(port), "--backend", "onnx",
         "--threads", str(args.server_threads or max(1, args.threads // args.workers)),
         "--batch-wait-ms", str(args.batch_wait_ms), "--max-batch",
         str(args.max_batch), "--log-level", "warning", "--workers", str(args.workers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "EMBEDSMITH_API_KEY"},
    )
    tables = []
    try:
        asyncio.run(wait_ready(host, port, server))
        asyncio.run(load(host, port, make_requests(50, pool, 99, "1-8"), 8, args.format))  # warm-up
        for shape in args.shapes.split(","):
            requests = make_requests(args.requests, pool, args.seed, shape)
            flat = [t for r in requests for t in r]
            lib = library_rate(flat, args.threads, args.repeats)  # the server is idle meanwhile
            rows = []
            for clients in levels:
                runs = [asyncio.run(load(host, port, requests, clients, args.format)) for _ in range(args.repeats)]
                elapsed = statistics.median(r[0] for r in runs)
                lat = [x for r in runs for x in r[1]]
                errors = sum(r[2] for r in runs)
                rate = len(flat) / elapsed
                rows.append((clients, rate, rate / lib, percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3,
                             errors))
            tables.append((shape, len(requests), len(flat), lib, rows))
        idle = asyncio.run(load(host, port, [[s] for s in pool[: args.idle]], 1, args.format))
        idle_p50 = percentile(idle[1], 50) * 1e3
    finally:
        server.terminate()
        server.wait(30)

    print(f"\nencoding_format={args.format}, {args.threads} encoder threads, {args.workers} server worker(s), "
          f"batch wait {args.batch_wait_ms} ms, max batch {args.max_batch}, median of {args.repeats}")
    print("\n| sentences/request | clients | sentences/s | library sentences/s | x library | p50 ms | p99 ms "
          "| errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape, _n, _m, lib, rows in tables:
        for clients, rate, ratio, p50, p99, errors in rows:
            print(f"| {shape} | {clients} | {rate:,.0f} | {lib:,.0f} | {ratio:.2f} | {p50:.1f} | {p99:.1f} "
                  f"| {errors} |")
    print(f"\nidle server, single-sentence requests: p50 {idle_p50:.1f} ms, p99 {percentile(idle[1], 99) * 1e3:.1f} ms "
          f"({len(idle[1])} requests, {idle[2]} errors)")
    targets = {"1": (0.6, 0.45), "8": (0.9, 0.8)}
    for shape, _n, _m, _lib, rows in tables:
        top = next((r for r in rows if r[0] == 32), None)
        if shape in targets and top is not None:
            goal, floor = targets[shape]
            verdict = "met" if top[2] >= goal else ("floor met, target NOT met" if top[2] >= floor else "NOT met")
            print(f"target: {shape} per request, 32 clients >= {goal}x (floor {floor}x): {top[2]:.2f}x ({verdict})")
    print(f"target: idle p50 <= 10 ms: {idle_p50:.1f} ms ({'met' if idle_p50 <= 10 else 'NOT met'})")


async def wait_ready(host: str, port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read().decode() if server.stderr else ''}")
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            line = await reader.readline()
            writer.close()
            if b" 200 " in line:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the server did not start in 120 s")


if __name__ == "__main__":
    main()
