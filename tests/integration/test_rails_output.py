"""Output rails on streamed and plain answers: nothing blocked or maskable leaks, however it is split."""

import json

import pytest

from tests.doubles import ScriptedEngine, text_chunks

from .conftest import MODEL

CHAT = "/v1/chat/completions"
RAILS = """
refusal: "Sorry, I cannot share that."
streaming: {window: 16, overlap: 24}
stages:
  output:
    - rail: pii
      action: mask
    - rail: deny
      keywords: ["project nightingale"]
"""


@pytest.fixture
def policies(tmp_path):
    (tmp_path / "rails.yaml").write_text(RAILS)
    return str(tmp_path)


def streamed(text: str) -> tuple[str, list[str]]:
    chunks = [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    return content, finishes


LEAKY = ["The plan is ", "called Proj", "ect Night", "ingale and it", " ships soon. More text follows here."]


async def test_a_forbidden_phrase_split_across_chunks_never_reaches_a_stream(make_client, policies):
    engine = ScriptedEngine(text_chunks("Intro text that is long enough to be released early. ", *LEAKY))
    async with make_client(engine, policies_dir=policies) as client:
        response = await client.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                 "stream": True})  # fmt: skip
    content, finishes = streamed(response.text)
    assert "nightingale" not in content.lower() and "Night" not in content
    assert content.startswith("Intro text")  # what passed before the block was released
    assert content.endswith("Sorry, I cannot share that.")
    assert finishes == ["content_filter"]
    assert engine.aborted  # the engine stopped generating


async def test_a_blocked_plain_answer_is_a_200_refusal(make_client, policies):
    engine = ScriptedEngine(text_chunks(*LEAKY))
    async with make_client(engine, policies_dir=policies) as client:
        response = await client.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    choice = response.json()["choices"][0]
    assert response.status_code == 200 and choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] == "Sorry, I cannot share that."
    assert response.json()["sentrail"]["rails"][0]["rail"] == "output.deny"


@pytest.mark.parametrize("stream", [True, False])
async def test_pii_split_across_chunks_is_masked(make_client, policies, stream):
    pieces = ["Contact our lead at jane", ".doe@exam", "ple.org or on ", "+44 20 7946 0958", " for details."]
    engine = ScriptedEngine(text_chunks(*pieces))
    async with make_client(engine, policies_dir=policies) as client:
        response = await client.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                 "stream": stream})  # fmt: skip
    content = streamed(response.text)[0] if stream else response.json()["choices"][0]["message"]["content"]
    assert content == "Contact our lead at [EMAIL] or on [PHONE] for details."


async def test_long_clean_answers_stream_in_pieces(make_client, policies):
    words = [f"word{i} " for i in range(60)]
    async with make_client(ScriptedEngine(text_chunks(*words)), policies_dir=policies) as client:
        response = await client.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                 "stream": True})  # fmt: skip
    deltas = [json.loads(e[6:]) for e in response.text.split("\n\n") if e.startswith("data: {")]
    texts = [d["choices"][0]["delta"].get("content") for d in deltas if d["choices"]]
    assert "".join(t or "" for t in texts) == "".join(words)
    assert len([t for t in texts if t]) > 3  # released window by window, not all at the end


async def test_a_blocked_response_is_incomplete_with_reason_content_filter(make_client, policies):
    engine = ScriptedEngine(text_chunks(*LEAKY))
    async with make_client(engine, policies_dir=policies) as client:
        response = await client.post("/v1/responses", json={"model": MODEL, "input": "hi"})
    body = response.json()
    assert response.status_code == 200 and body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "content_filter"}
    assert "nightingale" not in json.dumps(body["output"]).lower()
