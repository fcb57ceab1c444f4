"""Run `nemoguardrails server` on loopback with logging at WARNING (run with the NeMo venv's python).

NeMo Guardrails 0.24.1's `server` command has no host or log-level option: it ends in
`uvicorn.run(app, port=port, log_level="info", host="0.0.0.0")`, and at INFO it logs about 10 KB per
request. This runs that same CLI command (`nemoguardrails server --config ... --port ...`, every other
argument passed through) with `uvicorn.run` wrapped to bind 127.0.0.1 and log at WARNING; nothing else
about the server changes. `NEMO_GUARDRAILS_IORAILS_ENGINE=true` in the environment selects the IORails
engine, as with the plain command.

    bench/.venvs/nemo/bin/python bench/gateways/nemo_server.py --config DIR --port 8000 --disable-chat-ui
"""

from __future__ import annotations

import logging
import sys

import uvicorn


def main() -> None:
    real_run = uvicorn.run

    def loopback_run(app, **kwargs):
        kwargs.update(host="127.0.0.1", log_level="warning", access_log=False)
        return real_run(app, **kwargs)

    uvicorn.run = loopback_run
    from nemoguardrails.cli import app  # imported after the patch: `server` imports uvicorn lazily

    logging.getLogger().setLevel(logging.WARNING)
    sys.argv = ["nemoguardrails", "server", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
