"""Hot reload of policies/rails.yaml: a good edit takes effect; a broken one is logged with file:line
errors and the last good rails keep serving."""

import asyncio
import json
import os

from tests.doubles import ScriptedEngine

from .conftest import MODEL

CHAT = "/v1/chat/completions"
FIRST = "stages:\n  input:\n    - rail: deny\n      keywords: [apples]\n"
SECOND = "stages:\n  input:\n    - rail: deny\n      keywords: [pears]\n"
BROKEN = "stages:\n  input:\n    - rail: deny\n      keywords: [plums]\n    - rail: nonsense\n"


def ask(word: str) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"I like {word}"}]}


async def write(path, text: str, tick: int) -> None:
    path.write_text(text)
    os.utime(path, (tick, tick))  # a distinct mtime even within one clock tick


async def wait_for(check, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_good_edits_apply_and_broken_ones_keep_the_last_good(make_client, tmp_path, logs):
    rails = tmp_path / "rails.yaml"
    await write(rails, FIRST, 1_000_000)
    async with make_client(ScriptedEngine(), policies_dir=str(tmp_path), rails_reload_s=0.05) as client:
        assert (await client.post(CHAT, json=ask("apples"))).status_code == 400

        await write(rails, SECOND, 1_000_100)

        async def pears_blocked() -> bool:
            return (await client.post(CHAT, json=ask("pears"))).status_code == 400

        await wait_for(pears_blocked)
        assert (await client.post(CHAT, json=ask("apples"))).status_code == 200

        await write(rails, BROKEN, 1_000_200)

        async def failure_logged() -> bool:
            return "rails_reload_failed" in logs.getvalue()

        await wait_for(failure_logged)
        assert (await client.post(CHAT, json=ask("pears"))).status_code == 400  # last good set still on
        assert (await client.post(CHAT, json=ask("plums"))).status_code == 200
    failure = next(json.loads(line) for line in logs.getvalue().splitlines() if "rails_reload_failed" in line)
    assert failure["errors"] == [f"{rails}:5: stages.input[1]: Invalid value 'nonsense' - at `$.rail`"]


async def test_an_edit_inside_a_nemo_config_folder_reloads_the_rails(make_client, tmp_path):
    nemo = "rails:\n  config:\n    regex_detection:\n      input: {patterns: [%s]}\n"
    nemo += "  input: {flows: [regex check input]}\n"
    (tmp_path / "guard").mkdir()
    config = tmp_path / "guard" / "config.yml"
    await write(config, nemo % "apples", 1_000_000)
    await write(tmp_path / "rails.yaml", "stages:\n  input:\n    - {rail: nemo, config: guard}\n", 1_000_000)
    async with make_client(ScriptedEngine(), policies_dir=str(tmp_path), rails_reload_s=0.05) as client:
        first = await client.post(CHAT, json=ask("apples"))
        assert first.status_code == 400 and "regex check input" in first.json()["error"]["message"]
        assert (await client.post(CHAT, json=ask("pears"))).status_code == 200
        await write(config, nemo % "pears", 1_000_100)

        async def pears_blocked() -> bool:
            return (await client.post(CHAT, json=ask("pears"))).status_code == 400

        await wait_for(pears_blocked)
        assert (await client.post(CHAT, json=ask("apples"))).status_code == 200


async def test_a_tool_policy_edit_applies_and_a_broken_one_keeps_the_last_good(make_client, tmp_path, logs):
    from tests.doubles import calls_chunks

    tools = tmp_path / "tools.yaml"
    await write(tools, "default: deny\n", 1_000_000)
    engine = ScriptedEngine(calls_chunks(("lookup", "{}", "call_1")))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "look"}]}
    async with make_client(engine, policies_dir=str(tmp_path), rails_reload_s=0.05) as client:

        async def action() -> str:
            reply = (await client.post(CHAT, json=body)).json()
            assert reply["sentrail"], reply
            return reply["sentrail"]["tool_calls"][0]["action"]

        assert await action() == "deny"
        await write(tools, "default: allow\n", 1_000_100)

        async def allowed() -> bool:
            return await action() == "allow"

        await wait_for(allowed)
        await write(tools, "default: perhaps\n", 1_000_200)

        async def failure_logged() -> bool:
            return "tool_policy_reload_failed" in logs.getvalue()

        await wait_for(failure_logged)
        assert await action() == "allow"  # the last good policy still decides
