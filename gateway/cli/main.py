"""`sentrail serve`, `model prepare`, `keys create | list | revoke`, `policy check | test | explain | replay`,
`classifier build-test-model | score`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from redis.exceptions import RedisError

from engines.models import prepare_embedded_model
from gateway.cli import audit as audit_cli
from gateway.cli import classifier as classifier_cli
from gateway.cli import policy as policy_cli
from gateway.errors import GatewayError
from gateway.observability import configure_logging
from gateway.settings import ConfigError, Settings, load_settings
from rails.config import RailsConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sentrail", description="Guardrailed OpenAI-compatible gateway for agents.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="settings file (YAML or JSON); also $SENTRAIL_CONFIG")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="serve the gateway (default: embedded model, loopback)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--dev", action="store_true", help="development mode: no API keys (loopback only)")

    model = commands.add_parser("model", help="manage the embedded model").add_subparsers(dest="action", required=True)
    prepare = model.add_parser("prepare", parents=[common], help="build the embedded model offline (idempotent)")
    prepare.add_argument("--force", action="store_true", help="rebuild even when already prepared")

    policy = commands.add_parser("policy", help="work with policy files").add_subparsers(dest="action", required=True)
    policy_cli.add_commands(policy, common)

    audit = commands.add_parser("audit", help="read the audit log").add_subparsers(dest="action", required=True)
    audit_cli.add_commands(audit, common)

    guard = commands.add_parser("classifier", help="guard-model directories for rail: classifier")
    classifier_cli.add_commands(guard.add_subparsers(dest="action", required=True))

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", parents=[common], help="create a key for a tenant (the secret is shown once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--models", default="*", help="comma-separated model ids the key may use (default: all)")
    create.add_argument("--policy", default="default", help="policy set applied to this key's requests")
    create.add_argument("--roles", default="agent", help="comma-separated: agent, approver, auditor, admin")
    for limit in ("requests-per-minute", "tokens-per-minute", "max-session-steps", "max-session-tokens",
                  "max-session-seconds"):  # fmt: skip
        create.add_argument(f"--{limit}", type=int, default=0, help="0 means unlimited")
    keys.add_parser("list", parents=[common], help="list keys (never their secrets)")
    revoke = keys.add_parser("revoke", parents=[common], help="revoke a key by its id")
    revoke.add_argument("key_id")

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "classifier":
            return classifier_cli.run(args)
        settings = load_settings(args.config)
        configure_logging(settings.log_format, "warning", cache=False)  # stdout is for the output
        if args.command == "model":
            prepare_embedded_model(settings.home_path, force=args.force)
            return 0
        if args.command == "policy":
            return asyncio.run(policy_cli.run(settings, args))
        if args.command == "audit":
            return asyncio.run(audit_cli.run(settings, args))
        return asyncio.run(_keys(settings, args))
    except ConfigError as exc:
        print(f"sentrail: {exc}", file=sys.stderr)
        return 2
    except RailsConfigError as exc:
        print("sentrail: invalid policy files:", *exc.errors, sep="\n  ", file=sys.stderr)
        return 2
    except GatewayError as exc:  # e.g. the audit log cannot record a key's creation: nothing was done
        print(f"sentrail: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:
        print(f"sentrail: Redis: {exc}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.http.app import create_app

    settings = load_settings(args.config, host=args.host, port=args.port, dev_mode=args.dev or None)
    configure_logging(settings.log_format, settings.log_level)
    server = uvicorn.Server(server_config(create_app(settings), settings))
    server.run()
    return 0 if server.started else 1


def server_config(app: Any, settings: Settings) -> Any:
    """How the gateway is served: uvicorn with `GatewayHttpProtocol` (httptools, plus deadlines on a
    request's head and body and JSON errors), no websockets (no route uses them), uvicorn's 5 s
    keep-alive idle timeout."""
    import uvicorn

    from gateway.http.middleware import http_protocol

    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=settings.drain_s, lifespan="on", ws="none",
        http=http_protocol(settings.request_head_timeout_s, settings.request_body_timeout_s),
    )  # fmt: skip


@asynccontextmanager
async def connected_redis(settings: Settings) -> AsyncIterator[Any]:
    """The configured Redis; else the running gateway's embedded one; else the embedded one, briefly."""
    from gateway.stores.redis_server import EmbeddedRedis, connect_redis, redis_url_file

    candidates = [settings.redis_url] if settings.redis_url else []
    url_file = redis_url_file(settings.data_path)
    if not candidates and url_file.exists():
        candidates.append(url_file.read_text().strip())
    for url in candidates:
        client = connect_redis(url, settings.redis_timeout_s, settings.redis_max_connections)
        try:
            await client.ping()
        except Exception:
            await client.aclose()
            if settings.redis_url:
                raise
            continue
        try:
            yield client
        finally:
            await client.aclose()
        return
    embedded = EmbeddedRedis(settings.data_path / "redis", fsync="always")
    await embedded.start()
    client = connect_redis(embedded.url, settings.redis_timeout_s)
    try:
        yield client
    finally:
        await client.aclose()
        await embedded.stop()


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.stores.audit import SYSTEM, AuditLog
    from gateway.stores.keys import KeyStore, Limits

    async with connected_redis(settings) as redis:
        store = KeyStore(redis, cache_s=0)
        audit = AuditLog.from_settings(redis, settings, serving=False)  # sealed like the gateway's records
        actions: dict[str, Callable[[], Awaitable[int]]] = {}

        async def create() -> int:
            limits = Limits(
                args.requests_per_minute, args.tokens_per_minute, args.max_session_steps,
                args.max_session_tokens, args.max_session_seconds,
            )  # fmt: skip
            models = tuple(m.strip() for m in args.models.split(",") if m.strip()) or ("*",)
            roles = tuple(r.strip() for r in args.roles.split(",") if r.strip()) or ("agent",)
            try:
                secret, record, writes = store.creation(args.tenant, models, args.policy, limits, roles)
            except (msgspec.ValidationError, ValueError) as exc:
                print(f"sentrail: invalid key: {exc}", file=sys.stderr)
                return 2
            event = {"type": "key_created", "key_id": record.key_id, "tenant": record.tenant,
                     "roles": list(record.roles), "models": list(record.models)}  # fmt: skip
            await audit.append(SYSTEM, [event], writes)  # the key exists only with its audit record
            print(f"key id:  {record.key_id}\ntenant:  {record.tenant}\nroles:   {','.join(record.roles)}")
            print(f"secret:  {secret}")
            print("Store the secret now: it is not kept and cannot be shown again.", file=sys.stderr)
            return 0

        async def list_keys() -> int:
            for record in await store.list():
                print(msgspec.json.encode(record).decode())
            return 0

        async def revoke() -> int:
            writes = await store.revocation(args.key_id)
            if writes is None:
                print(f"sentrail: no key with id {args.key_id!r}", file=sys.stderr)
                return 1
            await audit.append(SYSTEM, [{"type": "key_revoked", "key_id": args.key_id}], writes)
            print(f"revoked {args.key_id}")
            return 0

        actions.update(create=create, list=list_keys, revoke=revoke)
        return await actions[args.action]()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
