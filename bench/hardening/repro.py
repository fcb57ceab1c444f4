"""Reproduce the 5xx that fuzz.py found, each on a fresh development gateway (embedded model on CPU).

1. A JSON schema in `response_format` that vLLM's xgrammar backend refuses but its guidance backend takes
   (here `{"properties": {"a": false}}`), sent as the engine's FIRST structured-output request, answers 200
   and leaves the engine on the guidance backend for its lifetime (vLLM keeps one backend per engine, chosen
   by the first such request); from then on every named or `required` tool call fails in the engine
   (`KeyError: 'triggers'`, the hermes structural tag) and the gateway answers 502 `engine_error`, for every
   tenant, until the engine restarts.
2. Once the engine is on xgrammar (first structured request: an ordinary named tool call), a JSON schema the
   grammar compiler cannot satisfy or represent makes the engine answer 500, which the gateway returns as
   503 `engine_unavailable` (a server error, counted against the engine's health) instead of a 400.

    .venv/bin/python bench/hardening/repro.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from devgateway import MODEL, NAMED_CALL, DevGateway

PROPERTY = {
    "a `false` subschema": False,
    "enum: []": {"enum": []},
    "minimum > maximum": {"type": "integer", "minimum": 5, "maximum": 2},
    "minLength > maxLength": {"type": "string", "minLength": 5, "maxLength": 2},
    "an integer beyond 64 bits": {"type": "integer", "x": 28959796198506936401920},
}
SCHEMAS = {what: {"type": "object", "properties": {"a": schema}} for what, schema in PROPERTY.items()}
TRIGGERS = "KeyError: 'triggers'"


def post(gateway: DevGateway, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(gateway.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, ""
    except urllib.error.HTTPError as exc:
        error = json.loads(exc.read())["error"]
        return exc.code, f"{error['code']}: {error['message'][:80]}"


def with_schema(schema: dict) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}  # fmt: skip


def main() -> int:
    found = 0
    with tempfile.TemporaryDirectory(prefix="sentrail-repro-") as tmp:
        gateway = DevGateway(Path(tmp) / "1", max_new_tokens=8)
        gateway.start()
        try:
            print("1. a fresh engine; its first structured-output request:")
            status, error = post(gateway, with_schema(SCHEMAS["a `false` subschema"]))
            print(f"   response_format {{'properties': {{'a': false}}}} -> {status} {error}")
            required = {**NAMED_CALL, "tool_choice": "required"}
            calls = [("named tool call", NAMED_CALL), ("tool_choice required", required), ("named call", NAMED_CALL)]
            for what, body in calls:
                status, error = post(gateway, body)
                found += status >= 500
                print(f"   then a {what} -> {status} {error}")
            print(f"   engine log lines with {TRIGGERS}: {gateway.log_path.read_text().count(TRIGGERS)}")
        finally:
            gateway.stop()
        gateway = DevGateway(Path(tmp) / "2", max_new_tokens=8)
        gateway.start()
        try:
            print("2. a fresh engine whose first structured-output request is a named tool call:")
            print(f"   named tool call -> {post(gateway, NAMED_CALL)[0]}")
            for what, schema in SCHEMAS.items():
                status, error = post(gateway, with_schema(schema))
                found += status >= 500
                print(f"   response_format with {what} -> {status} {error}")
            held = gateway.log_path.read_text().count('"engine_circuit_held"')
            print(f"   engine_circuit_held log lines (the breaker counted these as engine failures): {held}")
            print(f"   named tool call -> {post(gateway, NAMED_CALL)[0]}")
        finally:
            gateway.stop()
    print(f"{found} server errors")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
