"""`policies/mcp.yaml`: the upstream MCP servers Sentrail fronts, and what it does with their tools.

Loading validates every entry and reports every problem at once with file:line (as the other policy files
do); nothing half-valid is returned. No file, or a file without servers, means no upstream: the MCP endpoint
then lists no tools.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from rails.config import RailsConfigError, _line, _path_of, read_yaml

ServerName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]
Seconds = Annotated[float, Meta(gt=0, le=3600)]
SEPARATOR = "__"  # server name + SEPARATOR + tool name, for a tool whose name another server also has
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class UpstreamConfig(Struct, frozen=True, forbid_unknown_fields=True):
    """One upstream MCP server: `url` (streamable HTTP) or `command` (stdio, launched and supervised)."""

    name: ServerName
    url: str | None = None  # streamable HTTP endpoint, e.g. http://tools.internal:9000/mcp
    headers: dict[str, str] = {}  # url: sent with every request (e.g. the upstream's own Authorization)
    command: tuple[str, ...] | None = None  # stdio: argv; a first word `python` is the gateway's own interpreter
    env: dict[str, str] = {}  # stdio: extra environment
    cwd: str | None = None  # stdio: working directory
    enabled: bool = True
    call_timeout_s: Seconds = 30.0  # the longest one tools/call may take upstream before the agent gets an error
    connect_timeout_s: Seconds = 15.0  # start (stdio) or connect (url) and handshake
    list_timeout_s: Seconds = 10.0  # one tools/list upstream

    def argv(self) -> list[str]:
        argv = list(self.command or ())
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        return argv


class Pinning(Struct, frozen=True, forbid_unknown_fields=True):
    """A tool whose definition (name, description, input schema) changed since it was first seen."""

    on_change: Literal["block", "approval", "allow"] = "block"  # allow: reported (log, audit) and then pinned


class Descriptions(Struct, frozen=True, forbid_unknown_fields=True):
    """Tool descriptions pass the `tool_result` rails when listed (poisoned descriptions)."""

    on_flag: Literal["hide", "allow"] = "hide"  # a description a rail blocked or labelled: hide the tool, or list it


class McpFile(Struct, frozen=True, forbid_unknown_fields=True):
    version: int = 1
    servers: tuple[UpstreamConfig, ...] = ()
    namespace: Literal["on_collision", "always"] = "on_collision"  # server__tool names: when names collide, or always
    pinning: Pinning = Pinning()
    descriptions: Descriptions = Descriptions()

    @property
    def enabled(self) -> tuple[UpstreamConfig, ...]:
        return tuple(server for server in self.servers if server.enabled)


class McpConfig(msgspec.Struct, frozen=True):
    file: McpFile
    path: Path | None = None
    version: str = ""  # SHA-256 of the file, shortened (the audit log names it)


def load_mcp_config(path: Path) -> McpConfig:
    """Parse and validate; raise `RailsConfigError` listing every problem with file:line. No file: no servers
    and no version (the endpoint is off until the file appears)."""
    if not path.exists():
        return McpConfig(McpFile(), path)
    node, raw = read_yaml(path)
    errors: list[str] = []
    servers = raw.get("servers") if isinstance(raw, dict) else None
    for index, entry in enumerate(servers if isinstance(servers, list) else []):
        try:
            server = msgspec.convert(entry, UpstreamConfig)
        except msgspec.ValidationError as exc:
            unknown = re.search(r"unknown field `([^`]+)`", str(exc))
            at = [unknown.group(1)] if unknown else _path_of(exc)
            errors.append(f"{path}:{_line(node, ['servers', index, *at])}: servers[{index}]: {exc}")
            continue
        problem = _server_problem(server)
        if problem:
            errors.append(f"{path}:{_line(node, ['servers', index])}: servers[{index}] ({server.name}): {problem}")
    file = None
    try:
        file = msgspec.convert(raw if raw is not None else {}, McpFile)
    except msgspec.ValidationError as exc:
        if "$.servers[" not in str(exc):  # server errors are reported above
            errors.append(f"{path}:{_line(node, _path_of(exc))}: {exc}")
    if file is not None:
        seen: set[str] = set()
        for index, server in enumerate(file.servers):
            if server.name in seen:
                errors.append(f"{path}:{_line(node, ['servers', index])}: duplicate server name {server.name!r}")
            seen.add(server.name)
    if errors or file is None:
        raise RailsConfigError(errors or [f"{path}: invalid MCP file"])
    return McpConfig(file, path, hashlib.sha256(path.read_bytes()).hexdigest()[:16])


def _server_problem(server: UpstreamConfig) -> str | None:
    if (server.url is None) == (server.command is None):
        return "give exactly one of url (streamable HTTP) or command (stdio)"
    if server.url is not None and not re.match(r"^https?://[^\s/]+", server.url):
        return f"url {server.url!r} is not an http(s) URL"
    if server.command is not None and (not server.command or not server.command[0]):
        return "command is empty"
    if server.url is None and server.headers:
        return "headers only apply to a url server"
    if server.command is None and (server.env or server.cwd):
        return "env and cwd only apply to a command (stdio) server"
    return None
