"""Sentrail's MCP endpoint (`/mcp`, streamable HTTP): the tools of the configured upstream servers, judged.

The protocol is the `mcp` SDK's (a low-level `Server` behind its `StreamableHTTPSessionManager`, JSON
responses); this module authenticates each HTTP request with Sentrail's API keys (the `agent` role; the SDK
binds each MCP session to the key that opened it), names the tools (`server__tool` where two servers have a
tool of the same name, or always with `namespace: always`), and hands listings and calls to the judges:

- `tools/list`: each upstream's tools, each definition checked against the tenant's pins (a changed one is
  reported and, by `pinning.on_change`, hidden until approved or allowed) and its description passed through
  the `tool_result` rails (a flagged one hidden with `descriptions.on_flag: hide`); one audit record.
- `tools/call`: `calls.CallJudge` (policy before, rails after, a session step with its audit records).

The agent's session: the `X-Session-Id` header (the same as on `/v1/chat/completions`), else one session per
MCP session (`mcp_<Mcp-Session-Id>`), else a new session per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import msgspec
import structlog
from litestar import asgi
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from gateway.errors import Forbidden, NotFound, describe, kind_of, to_error_body
from gateway.mcp.calls import CallJudge, McpContext, tool_error
from gateway.mcp.config import SEPARATOR, TOOL_NAME, McpConfig, load_mcp_config
from gateway.mcp.pinning import PinCheck, Pins, definition_sha256
from gateway.mcp.upstream import Upstream, UpstreamUnavailable
from gateway.metrics import Metrics
from gateway.steps.guard import Guard
from gateway.stores.audit import AuditLog
from gateway.stores.keys import DEV_KEY, KeyRecord, KeyStore
from gateway.stores.sessions import SESSION_ID
from rails.base import Stage
from rails.config import RailsConfigError

log = structlog.get_logger("sentrail.mcp")
PIN_CACHE_S = 5.0  # how long a definition found pinned is not checked again (one Redis read a call saved)
DECISION_ERROR = -32003  # JSON-RPC server error: Sentrail could not decide (store down, limits, a bug): nothing ran


@dataclass(frozen=True)
class Exposed:
    """A tool as agents see it: its exposed name, and where it lives."""

    name: str
    server: str
    tool: types.Tool
    digest: str


class McpGateway:
    def __init__(
        self, config: McpConfig, judge: CallJudge, pins: Pins, guard: Guard | None, audit: AuditLog | None,
        tracer: Tracer, key_store: KeyStore, dev_mode: bool = False, cwd: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.metrics = metrics
        self.judge = judge
        self.pins = pins
        self.guard = guard
        self.audit = audit
        self.tracer = tracer
        self.key_store = key_store
        self.dev_mode = dev_mode
        self.cwd = cwd
        self.upstreams = {server.name: Upstream(server, cwd) for server in config.file.enabled}
        self._exposed: tuple[tuple, list[Exposed]] = ((), [])  # the catalog named and hashed, per upstream generation
        self._stopping: set[asyncio.Task] = set()  # upstreams a reload removed, being stopped
        self.reloaded = asyncio.Event()  # set (and replaced) after each reload that changed something
        self._pinned: dict[tuple[str, str, str, str], float] = {}  # (tenant, server, tool, definition) -> when it
        # matched the tenant's pin: trusted for PIN_CACHE_S (a pin moved by another replica is seen after that)
        self._verdicts: dict[str, tuple[bool, list[dict[str, Any]]]] = {}  # rails version:text -> (flagged, decisions)
        server = Server(
            "sentrail",
            on_list_tools=self._on_list_tools,
            on_call_tool=self._on_call_tool,
            get_tool_input_schema=self._input_schema,
        )  # else the SDK lists the tools for every call
        security = None
        if dev_mode:  # loopback without keys: only loopback hosts and origins (DNS rebinding)
            security = TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
        self.manager = StreamableHTTPSessionManager(server, json_response=True, security_settings=security)

    def upstream(self, name: str) -> Upstream:
        return self.upstreams[name]

    @property
    def configured(self) -> bool:
        """Whether mcp.yaml exists (it was loaded): without it there is no endpoint, only the reload watch."""
        return bool(self.config.version)

    def loaded_event(self, kind: str = "policy_loaded") -> dict[str, Any]:
        path = self.config.path
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.exists() else ""
        return {"type": kind, "kind": "mcp", "version": self.config.version, "files": {"mcp.yaml": digest},
                "servers": [s.name for s in self.config.file.enabled]}  # fmt: skip

    def reload(self) -> dict[str, Any] | None:
        """A changed mcp.yaml that loads replaces the config: servers added are started, removed ones stopped,
        changed ones restarted (the others keep their connection); one that does not load is logged with every
        error, and the last good config keeps serving."""
        assert self.config.path is not None
        try:
            config = load_mcp_config(self.config.path)
        except RailsConfigError as exc:
            log.error("mcp_reload_failed", errors=exc.errors, kept=self.config.version)
            return {"type": "policy_reload_failed", "kind": "mcp", "errors": exc.errors, "kept": self.config.version}
        if config.version == self.config.version:
            return None
        old, new = self.upstreams, {server.name: server for server in config.file.enabled}
        for name in [n for n, u in old.items() if new.get(n) != u.config]:
            task = asyncio.create_task(old.pop(name).stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        for name, server in new.items():
            if name not in old:
                old[name] = Upstream(server, self.cwd)
                old[name].start()
        self.config = msgspec.structs.replace(config, path=self.config.path)
        self.pins.on_change = config.file.pinning.on_change
        self._exposed = ((), [])
        log.info("mcp_reloaded", version=config.version, servers=sorted(old))
        self.reloaded.set()
        self.reloaded = asyncio.Event()
        return self.loaded_event("policy_reload")

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any = None) -> AsyncIterator[None]:
        for upstream in self.upstreams.values():
            upstream.start()
        log.info("mcp_gateway_started", servers=sorted(self.upstreams), version=self.config.version)
        try:
            async with self.manager.run():
                yield
        finally:
            await asyncio.gather(*(u.stop() for u in self.upstreams.values()))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """One HTTP request to the endpoint: the caller's key (401/403 as OpenAI errors), then the SDK."""
        try:
            if not self.configured:
                raise NotFound("No MCP gateway here: the policies folder has no mcp.yaml (it is picked up when added).")
            key = await self._authenticate(scope)
        except Exception as exc:  # no endpoint (404), a bad key (401, 403), the key store down (503): fail closed
            error_type, message, param = describe(exc)
            if error_type == "internal_error":
                log.error("mcp_authentication_failed", exc_info=exc)
            body = msgspec.json.encode(to_error_body(error_type, message, param))
            headers = [(b"content-type", b"application/json")]
            if error_type == "invalid_api_key":
                headers.append((b"www-authenticate", b"Bearer"))
            await send({"type": "http.response.start", "status": kind_of(error_type).status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope["sentrail_key"] = key
        scope["sentrail_trace"] = otel_context.get_current()  # the HTTP request's span: the MCP spans' parent
        scope["user"] = AuthenticatedUser(AccessToken(token="-", client_id=key.key_id, scopes=list(key.roles)))
        await self.manager.handle_request(scope, receive, send)

    async def _authenticate(self, scope: Any) -> KeyRecord:
        if self.dev_mode:
            return DEV_KEY
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = await self.key_store.authenticate(headers.get("authorization"))
        if "admin" not in key.roles and "agent" not in key.roles:
            raise Forbidden("This API key lacks the 'agent' role.", "authorization")
        return key

    # ---- tools/list -------------------------------------------------------------------------------------

    async def _on_list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        call = self._context(ctx)
        with self._span(ctx, call, "tools/list", None) as span:
            try:
                listed, hidden, unavailable, events = await self.listing(call.key.tenant)
                event = {"type": "mcp_list", "session_id": call.session_id, "request_id": call.request_id,
                         "mcp_session_id": call.mcp_session_id, "key_id": call.key.key_id, "hidden": hidden,
                         "tools": sorted(e.name for e in listed), "unavailable": unavailable}  # fmt: skip
                await self._audit(call.key.tenant, [*events, event])  # before the agent hears of any tool
            except Exception as exc:
                raise _protocol_error(exc, span) from None
            span.set_attributes({"sentrail.mcp.tools": len(listed), "sentrail.mcp.hidden": len(hidden)})
            log.info("mcp_tools_listed", tools=len(listed), hidden=len(hidden), unavailable=unavailable)
        return types.ListToolsResult(tools=[e.tool.model_copy(update={"name": e.name}) for e in listed])

    async def listing(self, tenant: str) -> tuple[list[Exposed], list[dict[str, str]], list[str], list[dict]]:
        """(the tools listed, those hidden with why, the servers that did not answer, audit events)."""
        names = list(self.upstreams)
        answers = await asyncio.gather(*(self.upstreams[n].list_tools() for n in names), return_exceptions=True)
        unavailable = []
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, BaseException):
                unavailable.append(name)
                log.warning("mcp_list_failed", server=name, error=str(answer)[:300])
        listed, hidden, events = [], [], []
        for exposed in self.exposed():
            if exposed.server in unavailable:
                continue
            reason, found = await self.admit(tenant, exposed)
            events += found
            if reason:
                hidden.append({"tool": exposed.name, "server": exposed.server, "reason": reason})
            else:
                listed.append(exposed)
        return listed, hidden, unavailable, events

    @property
    def catalog(self) -> dict[str, list[types.Tool]]:
        """server -> its tools at its last listing (servers never listed yet are absent); a tool whose name is not
        1-128 characters of A-Z a-z 0-9 _ . - is left out (logged)."""
        out: dict[str, list[types.Tool]] = {}
        for name, upstream in self.upstreams.items():
            if upstream.tools is not None:
                out[name] = [t for t in upstream.tools if _valid_name(t.name)]
                for tool in upstream.tools:
                    if not _valid_name(tool.name):
                        log.warning("mcp_tool_name_refused", server=name, tool=tool.name[:200])
        return out

    def exposed(self) -> list[Exposed]:
        """Every known tool under the name agents see: `server__tool` where another server has that name too."""
        generations = tuple((id(u), u.generation) for u in self.upstreams.values())
        if self._exposed[0] != generations:
            self._exposed = (generations, self._names())
        return self._exposed[1]

    def _names(self) -> list[Exposed]:
        counts: dict[str, int] = {}
        catalog = self.catalog
        for tools in catalog.values():
            for tool in tools:
                counts[tool.name] = counts.get(tool.name, 0) + 1
        always = self.config.file.namespace == "always"
        out = []
        for server in self.upstreams:
            for tool in catalog.get(server, ()):
                name = f"{server}{SEPARATOR}{tool.name}" if always or counts[tool.name] > 1 else tool.name
                out.append(Exposed(name, server, tool, definition_sha256(tool)))
        return out

    async def admit(self, tenant: str, exposed: Exposed) -> tuple[str, list[dict[str, Any]]]:
        """Why this tool may not be listed or called ("" when it may), and the audit events of what was found."""
        tool = exposed.tool
        pinned = (tenant, exposed.server, tool.name, exposed.digest)
        if time.monotonic() - self._pinned.get(pinned, -PIN_CACHE_S) < PIN_CACHE_S:  # matched the pin just now
            check = PinCheck("unchanged", True)
        else:
            check = (await self.pins.check(tenant, exposed.server, {tool.name: exposed.digest}, tool))[tool.name]
            if len(self._pinned) > 100_000:
                self._pinned.clear()
            if check.status in ("unchanged", "first_seen"):
                self._pinned[pinned] = time.monotonic()
        flagged, decisions = await self._description(exposed)
        events = _pin_events(exposed, check, self.pins.on_change, flagged, decisions)
        if not check.pinned:
            ticket = f" (approval ticket {check.ticket})" if check.ticket else ""
            return f"its definition changed since it was pinned{ticket}", events
        if flagged and self.config.file.descriptions.on_flag == "hide":
            return "its description was flagged by the tool_result rails", events
        return "", events

    async def _description(self, exposed: Exposed) -> tuple[bool, list[dict[str, Any]]]:
        """The `tool_result` rails on what the tool says of itself (once per definition and rails version)."""
        if self.guard is None or not self.guard.pipeline.has(Stage.TOOL_RESULT):
            return False, []
        tool = exposed.tool  # all the agent's model reads of it: title, description, both schemas' texts
        text = "\n".join([tool.title or "", tool.description or "", *_schema_descriptions(tool.input_schema),
                          *_schema_descriptions(tool.output_schema)])  # fmt: skip
        key = f"{self.guard.rails.version}:{hashlib.sha256(text.encode()).hexdigest()}"
        cached = self._verdicts.get(key)
        if cached is not None:
            return cached
        flagged, decisions = False, []
        result = await self.guard.pipeline.run(Stage.TOOL_RESULT, text)
        for decision in result.decisions:
            if decision.shadow:
                continue
            decisions.append({"rail": decision.rail, "action": decision.action, "reason": decision.reason,
                              "label": decision.label})  # fmt: skip
            flagged = flagged or decision.action in ("block", "label")
        if len(self._verdicts) > 10_000:
            self._verdicts.clear()
        self._verdicts[key] = (flagged, decisions)
        return flagged, decisions

    # ---- tools/call -------------------------------------------------------------------------------------

    async def _on_call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        call = self._context(ctx)
        with self._span(ctx, call, "tools/call", params.name) as span:
            try:
                result, action = await self.call(call, params.name, dict(params.arguments or {}))
            except Exception as exc:  # nothing ran upstream unless the call was judged; fail closed
                self._count("error", call.started)
                raise _protocol_error(exc, span) from None
            self._count(action, call.started)
            span.set_attribute("sentrail.tool.decision", action)
            if result.is_error:
                span.set_attributes({"error.type": "tool_error"})
                span.set_status(Status(StatusCode.ERROR))
        return result

    async def call(self, call: McpContext, name: str, arguments: dict[str, Any]) -> tuple[types.CallToolResult, str]:
        exposed = await self._resolve(name)
        if exposed is None:
            return tool_error(f"[sentrail] Unknown tool {name!r}: list the tools to see their names."), "unknown"
        reason, events = await self.admit(call.key.tenant, exposed)
        if events:
            await self._audit(call.key.tenant, events)
        if reason:
            text = f"[sentrail] Tool {name} is not available: {reason}. It was not run."
            return tool_error(text), "hidden"
        upstream = self.upstreams[exposed.server]

        async def execute() -> types.CallToolResult:
            with self.tracer.start_as_current_span(f"tools/call {exposed.tool.name}", kind=SpanKind.CLIENT) as span:
                span.set_attributes({"mcp.method.name": "tools/call", "gen_ai.tool.name": exposed.tool.name,
                                     "gen_ai.operation.name": "execute_tool", "sentrail.mcp.server": exposed.server,
                                     "network.transport": "pipe" if upstream.kind == "stdio" else "tcp"})  # fmt: skip
                try:
                    return await upstream.call(exposed.tool.name, arguments)
                except UpstreamUnavailable as exc:
                    span.set_status(Status(StatusCode.ERROR, "unavailable"))
                    span.set_attribute("error.type", "unavailable")
                    raise UpstreamUnavailable(f"[sentrail] {exc}. The call may not have run.") from None
                except MCPError as exc:
                    span.set_attribute("error.type", str(exc.error.code))
                    raise UpstreamUnavailable(f"[sentrail] MCP server {exposed.server!r} refused the call: "
                                              f"{exc.error.message}") from None  # fmt: skip

        outcome = await self.judge.call(call, exposed.name, exposed.server, exposed.tool.input_schema, arguments,
                                        execute)  # fmt: skip
        return outcome.result, outcome.action

    def _count(self, outcome: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.child(self.metrics.mcp_calls, outcome).inc()
            self.metrics.mcp_latency.observe(time.perf_counter() - started)

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        """The schema the SDK checks a call's `Mcp-Param-*` headers against, from the last listing."""
        return next((e.tool.input_schema for e in self.exposed() if e.name == name), None)

    async def _resolve(self, name: str) -> Exposed | None:
        for attempt in range(2):
            for exposed in self.exposed():
                if exposed.name == name:
                    return exposed
            if attempt == 0:  # not listed yet (a client that calls before listing) or new: list again
                await asyncio.gather(*(u.list_tools() for u in self.upstreams.values()), return_exceptions=True)
        return None

    # ---- helpers ----------------------------------------------------------------------------------------

    def _context(self, ctx: Any) -> McpContext:
        request = ctx.request
        if request is None or "sentrail_key" not in request.scope:
            raise MCPError(code=types.INVALID_REQUEST, message="no authenticated HTTP request")
        scope = request.scope
        mcp_session = request.headers.get("mcp-session-id")
        header = request.headers.get("x-session-id")
        if header:
            if not SESSION_ID.match(header):
                raise MCPError(
                    code=types.INVALID_PARAMS, message="X-Session-Id: 1-128 characters of A-Z a-z 0-9 . _ : -"
                )
            session_id, is_new = header, False
        elif mcp_session and SESSION_ID.match(f"mcp_{mcp_session}"):
            session_id, is_new = f"mcp_{mcp_session}", False
        else:
            session_id, is_new = f"sess_{uuid.uuid4().hex}", True
        request_id = scope.get("sentrail_request_id") or f"req_{uuid.uuid4().hex}"
        key: KeyRecord = scope["sentrail_key"]
        structlog.contextvars.bind_contextvars(request_id=request_id, session_id=session_id, tenant=key.tenant)
        return McpContext(request_id, key, session_id, is_new, mcp_session)

    @contextlib.contextmanager
    def _span(self, ctx: Any, call: McpContext, method: str, tool: str | None) -> Any:
        parent = ctx.request.scope.get("sentrail_trace") if ctx.request is not None else None
        attributes: dict[str, Any] = {
            "mcp.method.name": method, "mcp.protocol.version": ctx.protocol_version or "",
            "gen_ai.conversation.id": call.session_id, "sentrail.tenant": call.key.tenant,
            "sentrail.request_id": call.request_id, "network.transport": "tcp", "network.protocol.name": "http",
        }  # fmt: skip
        if call.mcp_session_id:
            attributes["mcp.session.id"] = call.mcp_session_id
        if ctx.request_id is not None:
            attributes["jsonrpc.request.id"] = str(ctx.request_id)
        if tool is not None:
            attributes.update({"gen_ai.tool.name": tool, "gen_ai.operation.name": "execute_tool"})
        name = f"{method} {tool}" if tool else method
        with self.tracer.start_as_current_span(name, parent, SpanKind.SERVER, attributes) as span:
            yield span

    async def _audit(self, tenant: str, events: list[dict[str, Any]]) -> None:
        if self.audit is not None and events:
            await self.audit.append(tenant, events)


def _pin_events(exposed: Exposed, check: PinCheck, on_change: str, flagged: bool, rails: list) -> list[dict]:
    if not check.event:
        return []
    event: dict[str, Any] = {"type": check.event, "server": exposed.server, "tool": exposed.tool.name,
                             "exposed_as": exposed.name, "definition_sha256": exposed.digest,
                             "description_flagged": flagged, "rails": rails}  # fmt: skip
    if check.status != "first_seen":
        event.update({"pinned_sha256": check.previous, "on_change": on_change, "ticket": check.ticket})
        log.warning("mcp_tool_definition_changed", server=exposed.server, tool=exposed.tool.name,
                    action=on_change, ticket=check.ticket, status=check.status)  # fmt: skip
    return [event]


def _schema_descriptions(schema: Any) -> list[str]:
    out: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("description", "title") and isinstance(value, str):
                out.append(value)
            else:
                out += _schema_descriptions(value)
    elif isinstance(schema, list):
        for value in schema:
            out += _schema_descriptions(value)
    return out


def _valid_name(name: str) -> bool:
    return bool(TOOL_NAME.match(name))


def _protocol_error(exc: Exception, span: Any) -> MCPError:
    """A JSON-RPC error that names the error type (store_unavailable, rate_limit_exceeded, budget_exceeded,
    internal_error) with a client-safe message; the details of an unexpected one are logged only."""
    if isinstance(exc, MCPError):
        return exc
    error_type, message, _ = describe(exc)
    if error_type == "internal_error":
        log.error("mcp_request_failed", exc_info=exc)
    span.set_status(Status(StatusCode.ERROR, error_type))
    span.set_attribute("error.type", error_type)
    return MCPError(code=DECISION_ERROR, message=f"{error_type}: {message}")


def mcp_route(gateway: McpGateway) -> Any:
    """The Litestar mount for the endpoint."""

    @asgi("/mcp", is_mount=True, copy_scope=False)
    async def mcp_endpoint(scope: Any, receive: Any, send: Any) -> None:
        await gateway(scope, receive, send)

    return mcp_endpoint
