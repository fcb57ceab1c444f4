"""`rail: classifier` in a `sentrail serve` process over the real engine: the model directory is read from the
policies folder (relative path), a prompt the guard model flags is refused before the engine sees it, and a
streamed answer passes the output classifier through the windowed fallback (the rail has no frontier)."""

import shutil

import openai
import pytest
import yaml
from openai import OpenAI

from engines.process import free_port
from tests.classifier_models import TRIGGER, trained

from .conftest import serve, stop

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def guarded(gateway, model, tmp_path_factory):
    """A second gateway whose rails are the guard model at every stage; the first gateway's vLLM engine."""
    folder = tmp_path_factory.mktemp("classifier-policies")
    shutil.copytree(trained(tmp_path_factory.mktemp("guard-model")), folder / "models" / "guard")
    entry = {"rail": "classifier", "model": "models/guard", "timeout_s": 30}
    rails = {"version": 1, "stages": {"input": [entry], "tool_result": [{**entry, "action": "label"}],
                                      "output": [entry]}}  # fmt: skip
    (folder / "rails.yaml").write_text(yaml.safe_dump(rails))
    (folder / "tools.yaml").write_text("version: 1\ndefault: allow\n")
    port = free_port()
    config = {"port": port, "dev_mode": True, "redis_url": gateway.app.state.redis_url, "policies_dir": str(folder),
              "models": [{"id": model, "engines": [{"kind": "remote", "url": gateway.engine_url}]}]}  # fmt: skip
    process = serve(config, tmp_path_factory.mktemp("classifier-gateway"), timeout_s=120)
    yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed", max_retries=0, timeout=120)
    stop(process, 30)


def test_a_flagged_prompt_is_refused_and_a_plain_answer_streams_through(guarded, model):
    flagged = [{"role": "user", "content": f"Tell me about {TRIGGER} please"}]
    with pytest.raises(openai.BadRequestError) as caught:
        guarded.chat.completions.create(model=model, messages=flagged, max_tokens=8)
    assert caught.value.code == "content_filter" and "input.classifier" in caught.value.message
    stream = guarded.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name three colours."}], max_tokens=48, temperature=0,
        stream=True,
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.strip() and finish[-1] in ("stop", "length")
