"""The NeMo Guardrails adapter: configs run on IORails, Python in a config folder is refused, LLM-backed
rails reach a Sentrail model by its id, and a judge that is down blocks (fail closed)."""

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from rails.base import Action, Stage
from rails.builtin.nemo import Endpoint
from rails.config import RailsConfigError, load_rails
from rails.pipeline import RailPipeline

ROOT = Path(__file__).resolve().parents[3]

REGEX_CONFIG = """\
models: []
rails:
  config:
    regex_detection:
      input: {patterns: ["(?i)drop\\\\s+table"]}
      output: {patterns: ["(?i)nightingale"]}
  input: {flows: [regex check input]}
  output: {flows: [regex check output]}
"""

SELF_CHECK_CONFIG = """\
models:
  - {type: main, engine: sentrail, model: judge-model}
rails:
  input: {flows: [self check input]}
prompts:
  - task: self_check_input
    content: 'Should this be blocked? Message: "{{ user_input }}" Answer:'
"""


INPUT_RAIL = "stages:\n  input:\n    - {rail: nemo, config: nemo/guard}\n"
OUTPUT_RAIL = "stages:\n  output:\n    - {rail: nemo, config: nemo/guard}\n"


def policies(tmp_path: Path, nemo: str, rails: str, extra: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "nemo" / "guard"
    folder.mkdir(parents=True)
    (folder / "config.yml").write_text(nemo)
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    path = tmp_path / "rails.yaml"
    path.write_text(rails)
    return path


async def test_a_regex_config_blocks_input_and_output_and_passes_the_rest(tmp_path):
    path = policies(
        tmp_path,
        REGEX_CONFIG,
        INPUT_RAIL + "  output:\n    - {rail: nemo, config: nemo/guard}\n",
    )
    _, rails = load_rails(path)
    pipeline = RailPipeline(rails)
    try:
        blocked = await pipeline.run(Stage.INPUT, "now DROP  TABLE users;")
        assert blocked.blocked is not None and blocked.blocked.rail == "input.nemo"
        assert "regex check input" in blocked.blocked.reason
        assert (await pipeline.run(Stage.INPUT, "what is a table?")).blocked is None
        out = await pipeline.run(Stage.OUTPUT, "Project Nightingale ships in May")
        assert out.blocked is not None and "regex check output" in out.blocked.reason
        assert (await pipeline.run(Stage.TOOL_RESULT, "drop table x")).decisions == []  # no rail at that stage
    finally:
        await pipeline.aclose()


@pytest.mark.parametrize("name", ["actions.py", "config.py"])
def test_a_config_folder_with_python_is_refused_unless_allowed(tmp_path, name):
    rails = "stages:\n  input:\n    - rail: nemo\n      config: nemo/guard\n"
    path = policies(tmp_path, REGEX_CONFIG, rails, {name: "import os\n"})
    with pytest.raises(RailsConfigError) as caught:
        load_rails(path)
    (error,) = caught.value.errors
    assert error.startswith(f"{path}:3: stages.input[0]") and name in error and "allow_python" in error
    path.write_text(rails + "      allow_python: true\n")
    _, loaded = load_rails(path)
    assert [c.rail.name for c in loaded] == ["input.nemo"]


@pytest.mark.parametrize(
    ("nemo", "rails", "needle"),
    [
        (REGEX_CONFIG, "stages:\n  input:\n    - {rail: nemo, config: nemo/missing}\n", "does not exist"),
        (REGEX_CONFIG, "stages:\n  input:\n    - {rail: nemo}\n", "`config:` is required"),
        (REGEX_CONFIG, "stages:\n  input:\n    - {rail: nemo, config: nemo/guard, max_concurrency: 1000}\n", "<= 256"),
        ("rails:\n  input: {flows: [regex check input]}\n", OUTPUT_RAIL, "no output rails"),
        ("colang_version: '2.x'\n", INPUT_RAIL, "IORails"),
        ("models: [\n", INPUT_RAIL, "nemo/guard"),
        (SELF_CHECK_CONFIG, INPUT_RAIL, "not a Sentrail model"),
    ],
)  # fmt: skip
def test_bad_nemo_entries_are_load_errors_with_the_line(tmp_path, nemo, rails, needle):
    path = policies(tmp_path, nemo, rails)
    with pytest.raises(RailsConfigError) as caught:
        load_rails(path, resolve=lambda model: None)
    (error,) = caught.value.errors
    assert error.startswith(f"{path}:3: stages.") and needle in error, error


class Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible model that answers Yes (block) when the prompt mentions a bomb."""

    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt = body["messages"][-1]["content"]
        Judge.seen.append((body["model"], prompt, self.headers.get("authorization")))
        answer = "Yes" if "bomb" in prompt else "No"
        reply = {
            "id": "j", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        }  # fmt: skip
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Judge.seen.clear()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


async def test_an_llm_backed_rail_asks_the_sentrail_model_it_names(tmp_path, judge):
    path = policies(tmp_path, SELF_CHECK_CONFIG, INPUT_RAIL)

    def resolve(model: str) -> Endpoint | None:
        return Endpoint(f"{judge}/v1", "upstream-name", "engine-key") if model == "judge-model" else None

    _, rails = load_rails(path, resolve)
    pipeline = RailPipeline(rails)
    try:
        result = await pipeline.run(Stage.INPUT, "how do I build a bomb")
        assert result.blocked is not None and "self check input" in result.blocked.reason
        assert (await pipeline.run(Stage.INPUT, "how do I bake bread")).blocked is None
    finally:
        await pipeline.aclose()
    assert [(model, auth) for model, _, auth in Judge.seen] == [("upstream-name", "Bearer engine-key")] * 2
    assert "how do I bake bread" in Judge.seen[1][1]


async def test_a_judge_that_is_down_blocks(tmp_path):
    path = policies(tmp_path, SELF_CHECK_CONFIG, INPUT_RAIL)
    _, rails = load_rails(path, lambda model: Endpoint("http://127.0.0.1:9/v1", model))  # nothing listens on 9
    pipeline = RailPipeline(rails)
    try:
        result = await pipeline.run(Stage.INPUT, "hello")
    finally:
        await pipeline.aclose()
    assert result.blocked is not None
    assert result.decisions[0].action == Action.BLOCK


def test_the_shipped_nemo_example_loads(tmp_path):
    shutil.copytree(ROOT / "policies" / "nemo", tmp_path / "nemo")
    path = tmp_path / "rails.yaml"
    path.write_text("stages:\n  input:\n    - {rail: nemo, config: nemo/self_check}\n"
                    "  output:\n    - {rail: nemo, config: nemo/self_check}\n")  # fmt: skip
    _, rails = load_rails(path, lambda model: Endpoint("http://127.0.0.1:9/v1", model))
    assert [c.rail.stage for c in rails] == [Stage.INPUT, Stage.OUTPUT]
