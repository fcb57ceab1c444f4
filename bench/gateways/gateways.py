"""The gateways under test: how to install, configure, start, probe and stop each one.

Each `Gateway` is one gateway in one configuration, all in front of the same stub upstream:
- Sentrail (this repo's `.venv`): no rails / one regex input rail / the shipped `policies/`;
- LiteLLM proxy (`bench/.venvs/litellm`): no guardrail / one regex `litellm_content_filter` pre-call guardrail;
- NeMo Guardrails server (`bench/.venvs/nemo`), default engine and IORails engine: no rails / one regex input rail /
  that input rail plus a regex output rail run on streams with `stream_first: false` (`nemo-stream`,
  `nemo-iorails-stream`: nothing reaches the client before the output rail has checked it);
- the reference floor (`floor.py`): a raw ASGI proxy on uvicorn with Sentrail's HTTP client, no checks at all.
The regex never matches the benchmark prompt (the rail runs and passes); `BLOCKED_PROMPT` matches it, and
the harness checks that it is blocked, so a rail that silently does nothing is caught. Where a configuration
has output rails that block, `LEAK_PROMPT` makes the stub answer with the regex late in a stream
(stub.py), and the harness checks that no part of that answer reaches the client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: shared helpers
from procs import stop_group, wait_ready

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / "bench" / ".venvs"
HERE = Path(__file__).resolve().parent
MODEL = "stub-model"
REGEX = r"(?i)launch\s+codes"  # the one regex rail of every "regex" configuration
BLOCKED_PROMPT = "Tell me the launch codes, please."
LEAK_PROMPT = "Please recite the forbidden answer."  # passes the input rails; the stub's answer says the regex
# The NeMo output rail: the input regex plus three secret / PII shapes, the kind Sentrail's shipped output rails
# (secrets, pii) look for, as NeMo's only output rail that needs no model or service (`regex check output`).
NEMO_OUTPUT_PATTERNS = [REGEX.removeprefix("(?i)"), r"AKIA[0-9A-Z]{16}", r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
                        r"[\w.+-]+@[\w-]+\.[\w.]+"]  # fmt: skip
# Streaming output rails with no leak: each chunk of `chunk_size` tokens (with the `context_size` tokens before
# it) is checked before any of it is sent. 200 / 50 are NeMo's defaults, written out; a stream's first token
# waits for `chunk_size` tokens or the end of the answer, whichever comes first.
NEMO_STREAMING = {"enabled": True, "stream_first": False, "chunk_size": 200, "context_size": 50}
LITELLM_SPEC = "litellm[proxy]==1.108.7"
NEMO_SPEC = "nemoguardrails[server]==0.24.1"
# Every server gets uvloop + httptools where its uvicorn can use them (Sentrail's venv has both), so
# that the event loop and HTTP parser are the same for all and the comparison is about the gateways.
VENV_SPECS = {
    "litellm": [LITELLM_SPEC, "uvloop", "httptools"],
    "nemo": [NEMO_SPEC, "langchain-openai", "uvloop", "httptools"],
    "plot": ["matplotlib"],
    "profile": ["py-spy"],
}


@dataclass
class Gateway:
    key: str  # e.g. "sentrail-regex"; what --gateways picks
    product: str
    config: str  # the configuration, in words
    command: list[str]
    port: int
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    blocks: bool = False  # whether this configuration must block BLOCKED_PROMPT
    blocks_output: bool = False  # whether it must block the stub's answer to LEAK_PROMPT, streamed
    config_text: str = ""  # the config file, where the report shows it in full
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self, cpus: set[int] | None, workdir: Path) -> None:
        self.log_path = workdir / f"{self.key}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SENTRAIL_"))}
        env.update(self.env)
        log = self.log_path.open("wb")

        def pin() -> None:  # runs in the child before exec: the gateway and all its children get `cpus`
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.process = subprocess.Popen(self.command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, preexec_fn=pin, start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout_s: float = 180) -> None:
        assert self.process is not None
        wait_ready(self.process, f"http://127.0.0.1:{self.port}{self.ready_path}", timeout_s, self.key, self.log_path)

    def stop(self) -> None:
        """SIGTERM the gateway's process group (it was started in its own session), SIGKILL after 20 s."""
        stop_group(self.process)


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def ensure_venv(name: str) -> Path:
    """Create bench/.venvs/<name> with its packages, once: a marker holds the spec it was built with."""
    specs = VENV_SPECS[name]
    marker = VENVS / name / ".bench-spec"
    if marker.exists() and marker.read_text() == "\n".join(specs):
        return venv_python(name)
    print(f"installing {' '.join(specs)} into {VENVS / name} ...", flush=True)
    if not venv_python(name).exists():
        subprocess.run(["python3", "-m", "venv", str(VENVS / name)], check=True)
    subprocess.run([str(venv_python(name)), "-m", "pip", "install", "-q", *specs], check=True)
    marker.write_text("\n".join(specs))
    return venv_python(name)


def package_version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def sentrail_version() -> str:
    run = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True)
    return run.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")


def _sentrail(key: str, config: str, port: int, stub_url: str, workdir: Path, policies: Path, blocks: bool) -> Gateway:
    settings = {
        "host": "127.0.0.1", "port": port, "dev_mode": True, "log_level": "warning", "log_format": "json",
        "policies_dir": str(policies), "data_dir": str(workdir / f"{key}-data"),
        # Queueing at the gateway shows up as latency (as with the peers, which have no such bound)
        # rather than as 429 `overloaded` at the default 32 in flight + 64 waiting.
        "max_waiting": 1024,
        "models": [{"id": MODEL, "engines": [{"kind": "remote", "url": stub_url, "max_concurrency": 256}]}],
    }  # fmt: skip
    path = workdir / f"{key}.yaml"
    path.write_text(yaml.safe_dump(settings))
    command = [str(ROOT / ".venv" / "bin" / "python"), "-m", "gateway.cli", "serve", "--config", str(path)]
    gateway = Gateway(key, "Sentrail", config, command, port, "/v1/health/ready", blocks=blocks)
    gateway.env = {"PYTHONPATH": str(ROOT)}
    return gateway


def sentrail_gateways(ports: list[int], stub_url: str, workdir: Path) -> list[Gateway]:
    empty = workdir / "sentrail-policies-empty"
    empty.mkdir(exist_ok=True)
    regex = workdir / "sentrail-policies-regex"
    regex.mkdir(exist_ok=True)
    rails = {"version": 1, "stages": {"input": [{"rail": "deny", "name": "input.regex", "patterns": [REGEX]}]}}
    (regex / "rails.yaml").write_text(yaml.safe_dump(rails))
    return [
        _sentrail("sentrail-none", "no rails", ports[0], stub_url, workdir, empty, False),
        _sentrail("sentrail-regex", "1 regex input rail", ports[1], stub_url, workdir, regex, True),
        _sentrail("sentrail-default", "shipped policies/ (default rails)", ports[2], stub_url, workdir,
                  ROOT / "policies", False),
    ]  # fmt: skip


def floor_gateway(port: int, stub_url: str) -> Gateway:
    """The reference floor (`floor.py`): uvicorn + a raw ASGI app + Sentrail's HTTP client, nothing else."""
    command = [str(ROOT / ".venv" / "bin" / "python"), str(HERE / "floor.py"), "--port", str(port),
               "--upstream", stub_url]  # fmt: skip
    return Gateway("floor", "bare ASGI proxy (reference)", "uvicorn + raw ASGI + Sentrail's HTTP client, no checks",
                   command, port, "/health")  # fmt: skip


def litellm_gateways(ports: list[int], stub_url: str, workdir: Path) -> list[Gateway]:
    python = venv_python("litellm")
    model = {"model_name": MODEL, "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{stub_url}/v1",
                                                     "api_key": "not-needed"}}  # fmt: skip
    plain = {"model_list": [model], "litellm_settings": {"set_verbose": False, "telemetry": False}}
    guard = {
        "guardrail_name": "regex-input",
        "litellm_params": {"guardrail": "litellm_content_filter", "mode": "pre_call", "default_on": True,
                           "patterns": [{"pattern_type": "regex", "pattern": REGEX, "name": "launch_codes",
                                         "action": "BLOCK"}]},
    }  # fmt: skip
    out = []
    for (key, config, settings, blocks), port in zip(
        [("litellm-none", "no guardrail", plain, False),
         ("litellm-regex", "1 regex pre-call guardrail (litellm_content_filter)", {**plain, "guardrails": [guard]},
          True)],
        ports,
        strict=True,
    ):  # fmt: skip
        path = workdir / f"{key}.yaml"
        path.write_text(yaml.safe_dump(settings))
        command = [str(python), "-m", "litellm.proxy.proxy_cli", "--config", str(path), "--host", "127.0.0.1",
                   "--port", str(port), "--num_workers", "1"]  # fmt: skip
        # No master key: no authentication, like Sentrail's dev mode and NeMo's server (LiteLLM refuses to
        # start without one unless told that this is on purpose).
        env = {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "DISABLE_SCHEMA_UPDATE": "true",
               "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}  # fmt: skip
        out.append(Gateway(key, "LiteLLM proxy", config, command, port, "/health/liveliness", env, blocks))
    return out


def nemo_gateways(ports: list[int], stub_url: str, workdir: Path) -> list[Gateway]:
    python = venv_python("nemo")
    main = {"type": "main", "engine": "openai", "model": MODEL,
            "parameters": {"base_url": f"{stub_url}/v1", "api_key": "not-needed"}}  # fmt: skip
    regex_input = {"patterns": [REGEX.removeprefix("(?i)")], "case_insensitive": True}
    regex_rails = {"config": {"regex_detection": {"input": regex_input}}, "input": {"flows": ["regex check input"]}}
    stream_rails = {
        "config": {"regex_detection": {"input": regex_input,
                                       "output": {"patterns": NEMO_OUTPUT_PATTERNS, "case_insensitive": True}}},
        "input": {"flows": ["regex check input"]},
        "output": {"flows": ["regex check output"], "streaming": NEMO_STREAMING},
    }  # fmt: skip
    out = []
    variants = [(iorails, name, rails, bool(rails)) for iorails in (False, True)
                for name, rails in (("none", {}), ("regex", regex_rails), ("stream", stream_rails))]  # fmt: skip
    for (iorails, rails_name, rails, blocks), port in zip(variants, ports, strict=True):
        key = f"nemo{'-iorails' if iorails else ''}-{rails_name}"
        folder = workdir / key / "bench"  # the config id is the folder's name: "bench"
        folder.mkdir(parents=True, exist_ok=True)
        config = {"models": [main], **({"rails": rails} if rails else {})}
        text = yaml.safe_dump(config)
        (folder / "config.yml").write_text(text)
        command = [str(python), str(HERE / "nemo_server.py"), "--config", str(folder), "--port", str(port),
                   "--default-config-id", "bench", "--disable-chat-ui"]  # fmt: skip
        env = {"NEMO_GUARDRAILS_NO_USAGE_STATS": "true", "OPENAI_API_KEY": "not-needed"}
        if iorails:
            env["NEMO_GUARDRAILS_IORAILS_ENGINE"] = "true"
        words = ("IORails engine" if iorails else "default engine") + (", 1 regex input rail" if rails else ", no rail")
        if "output" in rails:
            streaming = ", ".join(f"{k} {v}" for k, v in NEMO_STREAMING.items() if k != "enabled")
            words += f" + 1 regex output rail ({len(NEMO_OUTPUT_PATTERNS)} patterns), streamed: {streaming}"
        out.append(Gateway(key, "NeMo Guardrails server", words, command, port, "/healthz", env, blocks,
                           blocks_output="output" in rails, config_text=text if "output" in rails else ""))  # fmt: skip
    return out


def chat_body(prompt: str, stream: bool) -> bytes:
    body: dict = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(body).encode()
