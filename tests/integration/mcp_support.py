"""The MCP gateway's test harness: the real app on a real port (scripted chat engine, real Redis), upstream MCP
servers from the package index and `tests/mcp_servers/notes.py` (stdio, and one over streamable HTTP as a
subprocess), and the `mcp` SDK's client over streamable HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from engines.process import free_port
from gateway.http.app import create_app
from gateway.settings import load_settings
from tests.doubles import ScriptedEngine

ROOT = Path(__file__).resolve().parents[2]
MODEL = "test-model"

TOOLS = """
version: 1
default: allow
labels:
  rails: {"*.pii": pii}
limits: {max_identical_calls: 20}
rules:
  - name: mail-inside
    tools: [send_email, "*__send_email"]
    when: 'email_domain(call.args.to) != "example.com"'
    action: deny
    reason: e-mail goes only to example.com addresses
  - name: conversions-need-approval
    tools: [convert_time]
    action: require_approval
    reason: time conversions need a human
  - name: no-destinations-from-flagged-content
    tools: ["*"]
    when: 'sinks(call.args).exists(s, tainted(s, "injection") && !from_user(s))'
    action: deny
    reason: a destination in the arguments came from content where an injection was detected
"""

RAILS = """
version: 1
stages:
  tool_result:
    - rail: pii
      action: mask
    - rail: injection
      threshold: 0.5
      action: label
      label: injection
"""


def write_policies(folder: Path, servers: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tools.yaml").write_text(TOOLS)
    (folder / "rails.yaml").write_text(RAILS)
    (folder / "mcp.yaml").write_text(f"version: 1\n{extra}\nservers:\n{servers}")
    return folder


def stdio(name: str, *argv: str, extra: str = "") -> str:
    command = ", ".join(["python", *argv])
    return f"  - name: {name}\n    command: [{command}]\n    call_timeout_s: 20\n{extra}"


NOTES = ("-m", "tests.mcp_servers.notes")


class HttpUpstream:
    """tests/mcp_servers/notes.py over streamable HTTP, as its own process."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, **self.env} if self.env else None
        self.process = subprocess.Popen([sys.executable, *NOTES, "--http", str(self.port)], cwd=ROOT, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        assert self.process.stderr is not None
        reader = self.process.stderr
        while b"Uvicorn running" not in (line := reader.readline()):  # its own line saying it is ready
            if not line:
                raise RuntimeError("the HTTP MCP server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


@contextlib.asynccontextmanager
async def served(redis_server, policies: Path, dev_mode: bool = True, spans=None, engine=None,
                 broken: tuple[str, ...] = ()) -> AsyncIterator:  # fmt: skip
    """The app on a real port; yields (base URL, app) once every upstream is connected."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    port = free_port()
    settings = load_settings(environ={}, port=port, dev_mode=dev_mode, redis_url=redis_server.url, key_cache_s=0,
                             policies_dir=str(policies))  # fmt: skip
    processors = [SimpleSpanProcessor(spans)] if spans is not None else None
    app = create_app(settings, engines={MODEL: [(engine or ScriptedEngine(), 8)]}, span_processors=processors)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # uvicorn has a flag, not an event
            await asyncio.sleep(0.02)
            if task.done():
                task.result()
        for name, upstream in app.state.mcp.upstreams.items():
            if name not in broken:
                await upstream.wait_ready(30)
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def mcp_client(base: str, session: str | None = None, key: str | None = None) -> AsyncIterator[Client]:
    headers = {}
    if session:
        headers["X-Session-Id"] = session
    if key:
        headers["Authorization"] = f"Bearer {key}"
    http = httpx2.AsyncClient(headers=headers, timeout=60)
    async with http, Client(streamable_http_client(f"{base}/mcp", http_client=http), cache=None) as client:
        yield client


def text_of(result) -> str:
    return "".join(getattr(item, "text", "") for item in result.content)


def git_repo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    git = shutil.which("git") or "git"
    for argv in (["init", "-q"], ["config", "user.email", "t@example.com"], ["config", "user.name", "T"]):
        subprocess.run([git, *argv], cwd=folder, check=True)
    (folder / "README.md").write_text("hello\n")
    subprocess.run([git, "add", "README.md"], cwd=folder, check=True)
    subprocess.run([git, "commit", "-q", "-m", "first, reviewed by ann.smith@example.com"], cwd=folder, check=True)
    return folder
