"""The reference floor: the least any Python gateway on uvicorn can do per request.

A raw ASGI app (no framework, no checks, no session, no trace, no audit) that forwards each chat
completion to the upstream with Sentrail's own HTTP client (`engines/http1.py`) and relays the answer,
streams part by part. Served by uvicorn with uvloop and httptools, like Sentrail. Its added latency and
CPU per request show how much of a gateway's cost is the Python HTTP stack itself on this machine.

    PYTHONPATH=. .venv/bin/python bench/gateways/floor.py --port 9100 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import uvicorn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from engines.http1 import Http1Upstream

JSON = [(b"content-type", b"application/json")]


def make_app(upstream_url: str) -> Any:
    upstream = Http1Upstream(upstream_url, {}, connect_timeout_s=5, read_timeout_s=60)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await upstream.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["method"] == "GET":  # readiness
            await send({"type": "http.response.start", "status": 200, "headers": JSON})
            await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        async with upstream.post(scope["path"], body, {"Content-Type": "application/json"}) as response:
            kind = b"text/event-stream" if b'"stream":true' in body.replace(b" ", b"") else b"application/json"
            await send({"type": "http.response.start", "status": response.status, "headers": [(b"content-type", kind)]})
            async for part in response.parts():
                await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(make_app(args.upstream), host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools")  # fmt: skip


if __name__ == "__main__":
    main()
