"""Load generator for the gateway benchmark: raw asyncio HTTP/1.1 keep-alive connections (uvloop when installed).

Two modes:
- `open_loop`: requests are scheduled at a fixed rate whatever the responses do; each one takes an idle
  connection from the pool (or opens one, up to `max_conns`; beyond that it waits for one), and its
  latency runs from its *scheduled* send time, so a slow server cannot hide its queueing by slowing the
  generator down (no coordinated omission).
- `closed_loop`: one connection, one request after the other (the sequential added-latency figure).

Each connection carries one request at a time. Responses are parsed just enough to know where they end
(content-length or chunked) and, for streams, when the first non-empty `"content"` arrived (TTFT).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

CONTENT_RE = re.compile(rb'"content"\s*:\s*"[^"]')  # the first delta that carries text


@dataclass
class Sample:
    scheduled: float  # loop time the request was due (open loop) or sent (closed loop)
    sent: float
    status: int  # HTTP status; 0 = connection error, -1 = timeout
    ttft: float | None  # seconds from `scheduled` to the first content delta (streams)
    latency: float  # seconds from `scheduled` to the end of the response


@dataclass
class Result:
    samples: list[Sample] = field(default_factory=list)
    offered_rps: float = 0.0
    wall_s: float = 0.0
    max_conns_used: int = 0


class Conn(asyncio.Protocol):
    """One keep-alive client connection; `request()` sends one request and waits for its whole response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future[tuple[int, float | None]] | None = None
        self.reset()

    def reset(self) -> None:
        self.buf = bytearray()
        self.status = 0
        self.head_done = False
        self.length = -1  # content-length, or -1 for chunked / until close
        self.chunked = False
        self.body = bytearray()  # decoded body (only scanned for TTFT)
        self.ttft_at: float | None = None
        self.want_ttft = False
        self.scan_from = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.head_done and self.length < 0 and not self.chunked:  # body delimited by close
                self.waiter.set_result((self.status, self.ttft_at))
            else:
                self.waiter.set_exception(ConnectionError("connection closed"))

    def request(self, data: bytes, want_ttft: bool) -> asyncio.Future[tuple[int, float | None]]:
        assert self.transport is not None
        self.reset()
        self.want_ttft = want_ttft
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            self.status = int(head[9:12])
            del self.buf[: end + 4]
            self.head_done = True
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value:
                    self.chunked = True
        done = self._read_chunked() if self.chunked else (self.length >= 0 and len(self.buf) >= self.length)
        if not self.chunked:
            self.body = self.buf
        if self.want_ttft and self.ttft_at is None:
            if CONTENT_RE.search(self.body, max(0, self.scan_from - 32)):
                self.ttft_at = time.perf_counter()
            self.scan_from = len(self.body)
        if done and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.status, self.ttft_at))

    def _read_chunked(self) -> bool:
        """Move complete chunks from `buf` to `body`; True once the terminating chunk was read."""
        while True:
            line_end = self.buf.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(bytes(self.buf[:line_end]).split(b";")[0], 16)
            if size == 0:
                return self.buf.find(b"\r\n", line_end + 2) >= 0  # (no trailers expected)
            if len(self.buf) < line_end + 2 + size + 2:
                return False
            self.body += self.buf[line_end + 2 : line_end + 2 + size]
            del self.buf[: line_end + 2 + size + 2]


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"accept: */*\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


class Pool:
    def __init__(self, host: str, port: int, max_conns: int) -> None:
        self.host, self.port, self.max_conns = host, port, max_conns
        self.idle: list[Conn] = []
        self.open = 0
        self.peak = 0
        self.waiters: list[asyncio.Future[Conn]] = []
        self.opening: set[asyncio.Future[None]] = set()  # references to reconnect tasks

    async def get(self) -> Conn:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
            self.open -= 1
        if self.open < self.max_conns:
            self.open += 1
            self.peak = max(self.peak, self.open)
            try:
                _, conn = await asyncio.get_running_loop().create_connection(Conn, self.host, self.port)
            except OSError:
                self.open -= 1
                raise
            return conn
        waiter: asyncio.Future[Conn] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def _next_waiter(self) -> asyncio.Future[Conn] | None:
        """The oldest request still waiting (one that gave up, a timed-out `get`, is skipped)."""
        while self.waiters:
            waiter = self.waiters.pop(0)
            if not waiter.done():
                return waiter
        return None

    def put(self, conn: Conn) -> None:
        if conn.closed:
            self.open -= 1
            waiter = self._next_waiter()
            if waiter is not None:  # a request waits for a connection: let it open one
                task = asyncio.ensure_future(self._open_for(waiter))
                self.opening.add(task)
                task.add_done_callback(self.opening.discard)
            return
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.set_result(conn)
        else:
            self.idle.append(conn)

    async def _open_for(self, waiter: asyncio.Future[Conn]) -> None:
        try:
            self.open += 1
            _, conn = await asyncio.get_running_loop().create_connection(Conn, self.host, self.port)
        except OSError as exc:
            self.open -= 1
            if not waiter.done():
                waiter.set_exception(exc)
            return
        if waiter.done():  # it gave up while the connection opened: the next one may use it
            self.put(conn)
        else:
            waiter.set_result(conn)

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


async def _one(pool: Pool, data: bytes, stream: bool, scheduled: float, timeout_s: float) -> Sample:
    sent = scheduled
    try:
        conn = await asyncio.wait_for(pool.get(), timeout_s)
        sent = time.perf_counter()
        try:
            status, ttft_at = await asyncio.wait_for(conn.request(data, stream), timeout_s)
        except BaseException:
            if conn.transport is not None:
                conn.transport.close()
            conn.closed = True
            raise
        finally:
            pool.put(conn)
        end = time.perf_counter()
        return Sample(scheduled, sent, status, None if ttft_at is None else ttft_at - scheduled, end - scheduled)
    except TimeoutError:
        return Sample(scheduled, sent, -1, None, time.perf_counter() - scheduled)
    except (OSError, ConnectionError):
        return Sample(scheduled, sent, 0, None, time.perf_counter() - scheduled)


async def open_loop(host: str, port: int, data: bytes, stream: bool, rate: float, duration_s: float,
                    max_conns: int = 512, timeout_s: float = 10.0) -> Result:  # fmt: skip
    """Send `rate * duration_s` requests at fixed intervals; wait for all of them (or their timeout)."""
    pool = Pool(host, port, max_conns)
    total = max(1, int(rate * duration_s))
    interval = 1.0 / rate
    tasks = []
    start = time.perf_counter() + 0.01
    i = 0
    while i < total:
        now = time.perf_counter()
        while i < total and start + i * interval <= now:  # launch everything that is due
            tasks.append(asyncio.ensure_future(_one(pool, data, stream, start + i * interval, timeout_s)))
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
    samples = await asyncio.gather(*tasks)
    wall = max(s.scheduled + s.latency for s in samples) - start
    pool.close()
    return Result(list(samples), rate, wall, pool.peak)


async def closed_loop(host: str, port: int, data: bytes, stream: bool, duration_s: float,
                      max_requests: int = 100_000, timeout_s: float = 10.0) -> Result:  # fmt: skip
    """One connection, one request at a time, for `duration_s` seconds."""
    pool = Pool(host, port, 1)
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < duration_s and len(samples) < max_requests:
        samples.append(await _one(pool, data, stream, time.perf_counter(), timeout_s))
    wall = time.perf_counter() - start
    pool.close()
    return Result(samples, len(samples) / wall if wall else 0.0, wall, 1)


async def fetch(host: str, port: int, data: bytes, timeout_s: float = 30.0) -> tuple[int, bytes]:
    """One request on a fresh connection: its status and (de-chunked) body."""
    _, conn = await asyncio.get_running_loop().create_connection(Conn, host, port)
    try:
        status, _ = await asyncio.wait_for(conn.request(data, False), timeout_s)
        return status, bytes(conn.body)
    finally:
        if conn.transport is not None:
            conn.transport.close()


async def get(host: str, port: int, path: str) -> tuple[int, bytes]:
    return await fetch(host, port, f"GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\n\r\n".encode())


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when empty)."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def summarize(result: Result) -> dict[str, float]:
    ok = [s for s in result.samples if 200 <= s.status < 300]
    latencies = sorted(s.latency for s in ok)
    ttfts = sorted(s.ttft for s in ok if s.ttft is not None)
    lags = sorted(s.sent - s.scheduled for s in result.samples)
    n = len(result.samples)
    return {
        "n": n,
        "ok": len(ok),
        "errors": n - len(ok),
        "offered_rps": result.offered_rps,
        "achieved_rps": len(ok) / result.wall_s if result.wall_s > 0 else 0.0,
        **{f"p{int(q * 100)}_ms": 1000 * percentile(latencies, q) for q in (0.5, 0.9, 0.99)},
        **{f"ttft_p{int(q * 100)}_ms": 1000 * percentile(ttfts, q) for q in (0.5, 0.9, 0.99)},
        "send_lag_p99_ms": 1000 * percentile(lags, 0.99),  # waiting for a free connection / a busy generator
        "conns": result.max_conns_used,
    }
