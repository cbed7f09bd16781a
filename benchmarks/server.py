"""HTTP service throughput: /v1/embeddings with 1, 8 and 32 concurrent clients against the library's ``encode``.

The server (``embedsmith serve``) runs in its own process; the clients run in this one, as a minimal asyncio
HTTP/1.1 keep-alive client (so the figures are the server's, not an HTTP library's). Every client sends
requests of 1-8 STSb sentences (the same request list at every concurrency). The library figure is
``encode`` on exactly those sentences, in one call, in a separate process with the same thread count,
measured in the same run while the server is idle. Also reported: p50/p99 latency per concurrency and the
p50 of single-sentence requests on an idle server.

    python benchmarks/server.py --requests 600 --threads 2 --repeats 3

Targets (issue 7): >= 0.8x the library's throughput at 32 clients; idle single-sentence p50 <= 15 ms.
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


def make_requests(n: int, pool: list[str], seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(pool, rng.randint(1, 8)) for _ in range(n)]


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
    args = parser.parse_args()

    pool = load_sentences(3000)
    requests = make_requests(args.requests, pool, args.seed)
    flat = [t for r in requests for t in r]
    levels = [int(x) for x in args.clients.split(",")]
    host, port = "127.0.0.1", free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "embedsmith.cli", "serve", "--host", host, "--port", str(port), "--backend", "onnx",
         "--threads", str(args.threads), "--batch-wait-ms", str(args.batch_wait_ms), "--max-batch",
         str(args.max_batch), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "EMBEDSMITH_API_KEY": ""},
    )
    try:
        asyncio.run(wait_ready(host, port, server))
        rows = []
        lib = library_rate(flat, args.threads, args.repeats)  # the server is idle meanwhile
        asyncio.run(load(host, port, requests[:50], 8, args.format))  # warm-up
        for clients in levels:
            runs = [asyncio.run(load(host, port, requests, clients, args.format)) for _ in range(args.repeats)]
            elapsed = statistics.median(r[0] for r in runs)
            lat = [x for r in runs for x in r[1]]
            errors = sum(r[2] for r in runs)
            rate = len(flat) / elapsed
            rows.append((clients, rate, rate / lib, percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3, errors))
        idle = asyncio.run(load(host, port, [[s] for s in pool[: args.idle]], 1, args.format))
        idle_p50 = percentile(idle[1], 50) * 1e3
    finally:
        server.terminate()
        server.wait(30)

    print(f"\n{len(requests)} requests of 1-8 sentences ({len(flat)} sentences), encoding_format={args.format}, "
          f"{args.threads} encoder threads, batch wait {args.batch_wait_ms} ms, median of {args.repeats}")
    print(f"library encode (same sentences, one call): {lib:,.0f} sentences/s\n")
    print("| clients | sentences/s | x library | p50 ms | p99 ms | errors |")
    print("|---:|---:|---:|---:|---:|---:|")
    for clients, rate, ratio, p50, p99, errors in rows:
        print(f"| {clients} | {rate:,.0f} | {ratio:.2f} | {p50:.1f} | {p99:.1f} | {errors} |")
    print(f"\nidle server, single-sentence requests: p50 {idle_p50:.1f} ms, p99 {percentile(idle[1], 99) * 1e3:.1f} ms "
          f"({len(idle[1])} requests, {idle[2]} errors)")
    top = next((r for r in rows if r[0] == 32), None)
    if top is not None:
        print(f"targets: 32 clients >= 0.80x library: {top[2]:.2f}x ({'met' if top[2] >= 0.8 else 'NOT met'}); "
              f"idle p50 <= 15 ms: {idle_p50:.1f} ms ({'met' if idle_p50 <= 15 else 'NOT met'})")


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
