"""`sentrail serve` and `sentrail model prepare`."""

from __future__ import annotations

import argparse
import sys

from engines.models import prepare_embedded_model

from .settings import ConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sentrail", description="Guardrailed OpenAI-compatible gateway for agents.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the gateway (default: the embedded model on 127.0.0.1:8000)")
    serve.add_argument("--config", help="settings file (YAML or JSON); also $SENTRAIL_CONFIG")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")

    model = commands.add_parser("model", help="manage the embedded model").add_subparsers(dest="action", required=True)
    prepare = model.add_parser("prepare", help="build the embedded SmolLM2 model offline (idempotent)")
    prepare.add_argument("--force", action="store_true", help="rebuild even when already prepared")

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        settings = load_settings()
        prepare_embedded_model(settings.home_path, force=args.force)
        return 0
    except ConfigError as exc:
        print(f"sentrail: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .observability import configure_logging

    settings = load_settings(args.config, host=args.host, port=args.port)
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=30, lifespan="on",
    )  # fmt: skip
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
