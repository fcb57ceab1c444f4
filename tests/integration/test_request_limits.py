"""Bounded cost per request: limits on messages, content parts, tools and nesting, each a 400 naming the
limit (a legal 3.4 MB body with 100,000 messages used to hold the event loop for seconds; JSON nested
1,000 levels deep was a 500)."""

import json

from tests.doubles import ScriptedEngine

from .conftest import MODEL

CHAT = "/v1/chat/completions"


def nested(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


async def test_too_many_messages_parts_or_tools_are_400s_naming_the_limit(make_client):
    engine = ScriptedEngine()
    many = [{"role": "user", "content": "hi"}] * 100_000
    parts = [{"role": "user", "content": [{"type": "text", "text": "x"}] * 100_000}]
    tools = [{"type": "function", "function": {"name": f"t{i}"}} for i in range(200)]
    one = [{"role": "user", "content": "hi"}]
    async with make_client(engine) as client:
        cases = {
            "max_messages=2048": await client.post(CHAT, json={"model": MODEL, "messages": many}),
            "max_content_parts=4096": await client.post(CHAT, json={"model": MODEL, "messages": parts}),
            "max_tools=128": await client.post(CHAT, json={"model": MODEL, "messages": one, "tools": tools}),
            "max_messages=2048 ": await client.post("/v1/responses", json={"model": MODEL, "input": many}),
        }
    for limit, response in cases.items():
        assert response.status_code == 400, limit
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and limit.strip() in error["message"]
    assert engine.requests == []


async def test_deep_nesting_is_a_400_not_a_500(make_client):
    engine = ScriptedEngine()
    one = '[{"role": "user", "content": "hi"}]'
    bodies = {
        "tools[0].function.parameters": f'{{"model": "{MODEL}", "messages": {one}, '
        f'"tools": [{{"type": "function", "function": {{"name": "f", "parameters": {nested(100)}}}}}]}}',
        None: f'{{"model": "{MODEL}", "messages": {one}, "unknown": {nested(5000)}}}',
    }
    async with make_client(engine) as client:
        for param, body in bodies.items():
            response = await client.post(CHAT, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400, (param, response.text[:200])
            assert response.json()["error"]["param"] == param
        schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": json.loads(nested(40))}}
        body = {"model": MODEL, "messages": json.loads(one), "response_format": schema}
        response = await client.post(CHAT, json=body)
        assert response.status_code == 400 and "max_depth=32" in response.json()["error"]["message"]
        ok = await client.post(CHAT, json={"model": MODEL, "messages": json.loads(one), "tools": [
            {"type": "function", "function": {"name": "f", "parameters": json.loads(nested(20))}}]})  # fmt: skip
    assert ok.status_code == 200


async def test_limits_are_settings(make_client):
    engine = ScriptedEngine()
    limits = {"max_messages": 2, "max_content_parts": 4096, "max_tools": 128, "max_depth": 32}
    three = [{"role": "user", "content": "hi"}] * 3
    async with make_client(engine, request_limits=limits) as client:
        response = await client.post(CHAT, json={"model": MODEL, "messages": three})
    assert response.status_code == 400 and "max_messages=2" in response.json()["error"]["message"]
