"""`/v1/responses` over scripted engines and a real Redis: translation, chains, events, storage, tenants."""

import json

from tests.doubles import ScriptedEngine, text_chunks, tool_call_chunks

from .conftest import MODEL

RESPONSES = "/v1/responses"


def events_of(text: str) -> list[dict]:
    return [json.loads(block.split("data: ", 1)[1]) for block in text.split("\n\n") if "data: " in block]


async def test_a_chain_of_three_turns_carries_the_conversation(make_client):
    engine = ScriptedEngine(text_chunks("Hello", " Ada"))
    async with make_client(engine) as client:
        first = (
            await client.post(RESPONSES, json={"model": MODEL, "input": "I am Ada", "instructions": "Be brief"})
        ).json()
        second = (await client.post(RESPONSES, json={"model": MODEL, "input": "Who am I?",
                                                     "previous_response_id": first["id"]})).json()  # fmt: skip
        third = await client.post(RESPONSES, json={"model": MODEL, "input": [{"role": "user", "content": "Again"}],
                                                   "previous_response_id": second["id"]})  # fmt: skip
    assert first["object"] == "response" and first["status"] == "completed"
    assert first["output"][0]["content"][0]["text"] == "Hello Ada"
    assert first["usage"]["total_tokens"] == 9
    assert third.status_code == 200 and third.json()["previous_response_id"] == second["id"]
    roles = [(type(m).__name__, getattr(m, "content", None)) for m in engine.requests[2].messages]
    assert roles == [
        ("UserMessage", "I am Ada"), ("AssistantMessage", "Hello Ada"),
        ("UserMessage", "Who am I?"), ("AssistantMessage", "Hello Ada"), ("UserMessage", "Again"),
    ]  # fmt: skip
    assert type(engine.requests[0].messages[0]).__name__ == "SystemMessage"  # instructions: that turn only


async def test_the_chain_stays_in_one_session(make_client):
    async with make_client() as client:
        first = await client.post(RESPONSES, json={"model": MODEL, "input": "one"})
        session_id = first.headers["x-session-id"]
        second = await client.post(RESPONSES, json={"model": MODEL, "input": "two",
                                                    "previous_response_id": first.json()["id"]})  # fmt: skip
        assert second.headers["x-session-id"] == session_id
        steps = (await client.get(f"/v1/sessions/{session_id}")).json()["steps"]
    assert [s["api"] for s in steps] == ["responses", "responses"]


async def test_function_calls_round_trip(make_client):
    engine = ScriptedEngine(tool_call_chunks("get_weather", ['{"city": "Paris"}'], call_id="call_9"))
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    async with make_client(engine) as client:
        first = (await client.post(RESPONSES, json={"model": MODEL, "input": "weather?", "tools": [tool],
                                                    "tool_choice": "required"})).json()  # fmt: skip
        engine.script = text_chunks("Sunny")
        output = {"type": "function_call_output", "call_id": "call_9", "output": "sunny"}
        second = await client.post(RESPONSES, json={"model": MODEL, "input": [output],
                                                    "previous_response_id": first["id"]})  # fmt: skip
        steps = (await client.get(f"/v1/sessions/{second.headers['x-session-id']}")).json()["steps"]
    call = {"type": "function_call", "id": "fc_call_9", "call_id": "call_9", "name": "get_weather"}
    assert first["output"] == [{**call, "arguments": '{"city": "Paris"}', "status": "completed"}]
    tool_message = engine.requests[1].messages[-1]
    assert (type(tool_message).__name__, tool_message.tool_call_id) == ("ToolMessage", "call_9")
    assert steps[1]["received"][0]["known"] is True


async def test_streaming_emits_the_responses_event_sequence(make_client):
    async with make_client() as client:
        response = await client.post(RESPONSES, json={"model": MODEL, "input": "hi", "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response.text)
    kinds = [e["type"] for e in events]
    kinds = [k for i, k in enumerate(kinds) if k != "response.output_text.delta" or kinds[i - 1] != k]  # 1+ deltas
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Hello world"


async def test_stored_responses_can_be_read_and_deleted_unstored_cannot(make_client):
    async with make_client() as client:
        kept = (await client.post(RESPONSES, json={"model": MODEL, "input": "hi"})).json()
        fleeting = (await client.post(RESPONSES, json={"model": MODEL, "input": "hi", "store": False})).json()
        assert (await client.get(f"{RESPONSES}/{kept['id']}")).json() == kept
        assert (await client.get(f"{RESPONSES}/{fleeting['id']}")).status_code == 404
        assert (await client.delete(f"{RESPONSES}/{kept['id']}")).json()["deleted"] is True
        assert (await client.get(f"{RESPONSES}/{kept['id']}")).status_code == 404


async def test_bad_input_is_a_400_naming_the_param(make_client):
    async with make_client() as client:
        unknown = await client.post(RESPONSES, json={"model": MODEL, "input": [{"type": "computer_call"}]})
        no_call_id = await client.post(RESPONSES, json={"model": MODEL, "input": [{"type": "function_call_output"}]})
        missing = await client.post(RESPONSES, json={"model": MODEL, "input": "x", "previous_response_id": "resp_nope"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "input[0].type"
    assert no_call_id.status_code == 400 and no_call_id.json()["error"]["param"] == "input[0].call_id"
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "previous_response_id"


async def test_tenants_never_see_each_others_responses(make_client, keys):
    secret_a, _ = await keys.create("tenant-a")
    secret_b, _ = await keys.create("tenant-b")
    a, b = {"authorization": f"Bearer {secret_a}"}, {"authorization": f"Bearer {secret_b}"}
    async with make_client(dev_mode=False) as client:
        mine = (await client.post(RESPONSES, json={"model": MODEL, "input": "secret"}, headers=a)).json()
        assert (await client.get(f"{RESPONSES}/{mine['id']}", headers=b)).status_code == 404
        assert (await client.delete(f"{RESPONSES}/{mine['id']}", headers=b)).status_code == 404
        continued = await client.post(
            RESPONSES, json={"model": MODEL, "input": "more", "previous_response_id": mine["id"]}, headers=b
        )
        assert continued.status_code == 404
        assert (await client.get(f"{RESPONSES}/{mine['id']}", headers=a)).status_code == 200
