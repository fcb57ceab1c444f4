"""One frozen settings object, parsed once at start from an optional file plus environment variables.

Precedence: defaults < file (`SENTRAIL_CONFIG` or `--config`, YAML or JSON) < environment variables.
With nothing configured, Sentrail serves the embedded SmolLM2 model on 127.0.0.1:8000 on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from engines.models import EMBEDDED_MODEL_ID, default_home
from protocol.openai import DEFAULT_LIMITS, RequestLimits

Port = Annotated[int, Meta(ge=0, le=65535)]


class ConfigError(ValueError):
    """Settings that cannot be used; the message names the file and the field."""


class EngineSettings(Struct, frozen=True, forbid_unknown_fields=True):
    """One replica. `kind: vllm` runs a managed vLLM server child; `kind: inprocess` runs vLLM's server in
    the gateway process; `kind: remote` uses an OpenAI-compatible URL."""

    kind: Literal["vllm", "inprocess", "remote"] = "vllm"
    model_path: str | None = None  # vllm, inprocess: a HF directory; None means the embedded model
    url: str | None = None  # remote: base URL without /v1
    api_key: str | None = None  # remote: bearer token for the upstream
    upstream_model: str | None = None  # name the engine knows the model by; defaults to the model id
    port: Port = 0  # vllm: 0 picks a free loopback port
    args: tuple[str, ...] = ()  # vllm, inprocess: extra `vllm serve` arguments
    env: dict[str, str] = {}  # vllm: extra environment for the child process
    max_concurrency: Annotated[int, Meta(ge=1)] = 32
    weight: Annotated[float, Meta(gt=0)] = 1.0  # routing share relative to the model's other engines
    startup_timeout_s: Annotated[float, Meta(gt=0)] = 600.0
    read_timeout_s: Annotated[float, Meta(gt=0)] = 120.0  # longest silence from the engine before the request fails
    cpus: Annotated[str, Meta(pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$")] | None = None  # vllm: pin, e.g. "0" or "0-3"
    gpus: str | None = None  # vllm: CUDA_VISIBLE_DEVICES for the child, e.g. "0" or "0,1"


class ModelSettings(Struct, frozen=True, forbid_unknown_fields=True):
    id: Annotated[str, Meta(min_length=1, max_length=128)]
    engines: Annotated[tuple[EngineSettings, ...], Meta(min_length=1)] = (EngineSettings(),)


class Settings(Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 8000
    models: tuple[ModelSettings, ...] = (ModelSettings(id=EMBEDDED_MODEL_ID),)
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 4 * 1024 * 1024
    max_waiting: Annotated[int, Meta(ge=0)] = 64  # requests allowed to wait for an engine slot
    wait_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    home: str = ""  # models and data live here; defaults to $SENTRAIL_HOME or ~/.cache/sentrail
    policies_dir: str = "policies"  # rails.yaml (and later tool policies) live here
    rails_reload_s: Annotated[float, Meta(gt=0)] = 2.0  # how often rails.yaml is checked for changes
    data_dir: str = ""  # the embedded Redis persists here; defaults to <home>/data
    redis_url: str = ""  # empty: start the embedded Redis under <data_dir>/redis
    redis_fsync: Literal["always", "everysec"] = "everysec"  # embedded Redis AOF fsync policy
    redis_timeout_s: Annotated[float, Meta(gt=0)] = 2.0  # connect and command timeout: fail closed, fast
    redis_max_connections: Annotated[int, Meta(ge=1)] = 100  # the pool; beyond it a command waits redis_timeout_s
    request_head_timeout_s: Annotated[float, Meta(gt=0)] = 10.0  # a request's line and headers must arrive in this
    request_body_timeout_s: Annotated[float, Meta(gt=0)] = 60.0  # its body must arrive in this (408 past it)
    health_interval_s: Annotated[float, Meta(gt=0)] = 2.0  # how often each engine's health is checked
    dev_mode: bool = False  # no API keys; every request is tenant "dev". Refused unless bound to loopback
    session_ttl_s: Annotated[int, Meta(ge=60)] = 7 * 24 * 3600  # idle sessions expire after this
    key_cache_s: Annotated[float, Meta(ge=0)] = 5.0  # how long a looked-up API key is trusted in-process
    drain_s: Annotated[float, Meta(ge=0)] = 30.0  # on SIGTERM: how long open requests and streams may finish
    audit_jsonl: str = ""  # also append every audit record to this JSONL file (an off-box copy: `verify --against`)
    audit_key_file: str = ""  # seals the audit log (HMAC-SHA256); keep it off the Redis host. Empty: --dev makes one
    audit_keyring: str = ""  # a key file or folder of older audit keys, for verifying records they sealed
    audit_retention_records: Annotated[int, Meta(ge=0)] = 0  # `audit trim` keeps this many per chain (0: say --keep)
    audit_content: bool = False  # audit records carry the (masked) message text
    trace_content: bool = False  # engine spans carry the (masked) messages in and out
    request_limits: RequestLimits = DEFAULT_LIMITS  # messages, content parts, tools, schema nesting per request

    @property
    def home_path(self) -> Path:
        return Path(self.home) if self.home else default_home()

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir) if self.data_dir else self.home_path / "data"


# Environment variable -> settings field. Values are parsed with the field's type.
ENV_VARS = {
    "SENTRAIL_HOST": "host",
    "SENTRAIL_PORT": "port",
    "SENTRAIL_MAX_BODY_BYTES": "max_body_bytes",
    "SENTRAIL_MAX_WAITING": "max_waiting",
    "SENTRAIL_WAIT_TIMEOUT_S": "wait_timeout_s",
    "SENTRAIL_LOG_FORMAT": "log_format",
    "SENTRAIL_LOG_LEVEL": "log_level",
    "SENTRAIL_HOME": "home",
    "SENTRAIL_DATA_DIR": "data_dir",
    "SENTRAIL_POLICIES_DIR": "policies_dir",
    "REDIS_URL": "redis_url",
    "SENTRAIL_REDIS_URL": "redis_url",
    "SENTRAIL_REDIS_FSYNC": "redis_fsync",
    "SENTRAIL_DEV_MODE": "dev_mode",
    "SENTRAIL_SESSION_TTL_S": "session_ttl_s",
    "SENTRAIL_AUDIT_JSONL": "audit_jsonl",
    "SENTRAIL_AUDIT_KEY_FILE": "audit_key_file",
    "SENTRAIL_AUDIT_KEYRING": "audit_keyring",
}

LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


def load_settings(config_file: str | None = None, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Defaults, then the file, then the environment, then explicit overrides (e.g. CLI flags)."""
    environ = dict(os.environ) if environ is None else environ
    raw: dict[str, Any] = {}
    path = config_file or environ.get("SENTRAIL_CONFIG")
    if path:
        raw.update(_read_file(Path(path)))
    for var, name in ENV_VARS.items():
        if var in environ:
            raw[name] = environ[var]
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid settings{where}: {exc}") from None
    _check_engines(settings, where=f" in {path}" if path else "")
    if settings.dev_mode and settings.host not in LOOPBACK_HOSTS:
        raise ConfigError(f"dev_mode (no API keys) is only allowed on a loopback address, not on {settings.host!r}")
    return settings


# Engine fields that only a managed child process can honour.
_CHILD_ONLY = ("port", "env", "cpus", "gpus")


def _check_engines(settings: Settings, where: str) -> None:
    """What the field types cannot say: each kind's required and refused fields."""
    inprocess = 0
    for model in settings.models:
        for index, spec in enumerate(model.engines):
            name = f"models[{model.id}].engines[{index}]"
            if spec.kind == "remote" and not spec.url:
                raise ConfigError(f"invalid settings{where}: {name}: kind 'remote' needs a url")
            if spec.kind == "inprocess":
                inprocess += 1
                given = [field for field in _CHILD_ONLY if getattr(spec, field) != getattr(_DEFAULT_ENGINE, field)]
                if given:
                    raise ConfigError(
                        f"invalid settings{where}: {name}: {', '.join(given)} only apply to kind 'vllm' (a child "
                        "process); an in-process engine shares the gateway's process"
                    )
    if inprocess > 1:
        raise ConfigError(f"invalid settings{where}: at most one engine of kind 'inprocess' per gateway process")


_DEFAULT_ENGINE = EngineSettings()


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = msgspec.json.decode(text) if path.suffix == ".json" else msgspec.yaml.decode(text)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data
