"""NeMo Guardrails configs as Sentrail rails, run on NeMo's fast IORails engine (`check_async`).

A config folder under `policies/` (config.yml + Colang + prompts) is data: a folder that carries
Python (`config.py`, `actions.py`, any `*.py`) or pulls other folders in with `import_paths` is
refused unless the rails file allows it explicitly. Configs must run on IORails (the LLMRails path
is ~100x slower and needs hub downloads for most of what it adds); the reason NeMo gives when one
cannot is reported as the load error.

LLM-backed NeMo rails (self check input/output, content safety...) name a model with
`engine: sentrail` and `model: <a Sentrail model id>`: the adapter points them at that model's engine
in Sentrail's own pool (its OpenAI-compatible surface, with its key), so no rail needs a hub or a
second server. Any other engine (a separate guard model by `base_url`) is used as NeMo configures it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..base import Stage, Verdict

# A security gateway does not phone home: NeMo Guardrails' anonymous usage reporting is off unless the
# operator turns it on explicitly.
os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

SENTRAIL_ENGINE = "sentrail"
IORAILS_QUEUE_DEPTH = 256  # IORails rejects submissions beyond this many pending checks


class Endpoint(NamedTuple):
    """Where a Sentrail model is served: an OpenAI-compatible base URL, the upstream model name, a key."""

    base_url: str
    model: str
    api_key: str | None = None


ModelResolver = Callable[[str], Endpoint | None]


class NemoConfigError(ValueError):
    pass


def load_nemo_config(folder: Path, allow_python: bool = False, resolve: ModelResolver | None = None):
    """Validate and load a NeMo Guardrails config folder; `NemoConfigError` says what is wrong."""
    from nemoguardrails import RailsConfig
    from nemoguardrails.guardrails.iorails import IORails

    if not folder.is_dir():
        raise NemoConfigError(f"NeMo Guardrails config folder {str(folder)!r} does not exist")
    if not any((folder / name).is_file() for name in ("config.yml", "config.yaml")):
        raise NemoConfigError(f"{str(folder)!r} has no config.yml")
    python = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py"))
    if python and not allow_python:
        raise NemoConfigError(
            f"{str(folder)!r} carries Python ({', '.join(python)}); policies are data: remove it, "
            "or set allow_python: true on this rail after reviewing the code"
        )
    try:
        config = RailsConfig.from_path(str(folder))
    except Exception as exc:  # NeMo raises pydantic, YAML, Colang and plain errors alike
        raise NemoConfigError(f"{str(folder)!r}: {type(exc).__name__}: {_first_line(exc)}") from None
    if config.import_paths and not allow_python:
        raise NemoConfigError(f"{str(folder)!r}: import_paths can bring in Python; set allow_python: true to use it")
    for model in config.models:
        if model.engine != SENTRAIL_ENGINE:
            continue
        endpoint = resolve(model.model or "") if resolve is not None else Endpoint("http://unresolved", "")
        if endpoint is None:
            raise NemoConfigError(
                f"{str(folder)!r}: model {model.model!r} (engine: sentrail) is not a Sentrail model with a "
                "network address (a vllm or remote engine; an in-process engine has none)"
            )
        params = dict(model.parameters or {})
        params["base_url"] = endpoint.base_url
        if endpoint.api_key:
            headers = {**params.get("default_headers", {}), "Authorization": f"Bearer {endpoint.api_key}"}
            params["default_headers"] = headers
        model.parameters = params
        model.model = endpoint.model or model.model
    reason = IORails.unsupported_reason(config)
    if reason is not None:
        raise NemoConfigError(f"{str(folder)!r} cannot run on the IORails engine: {reason}")
    return config


class NemoRail:
    """One NeMo Guardrails config at one stage. `input` and `tool_result` run the config's input rails
    on the text as a user message; `output` runs its output rails on it as an assistant message.
    NeMo rails may rewrite text, so this rail takes its turn with the maskers (configured order)."""

    modifies = True

    def __init__(self, name: str, stage: Stage, config, max_concurrency: int = 128) -> None:
        from nemoguardrails.guardrails.guardrails import Guardrails
        from nemoguardrails.rails.llm.options import RailType

        self.name, self.stage = name, stage
        self._rail_type = RailType.OUTPUT if stage == Stage.OUTPUT else RailType.INPUT
        self._role = "assistant" if stage == Stage.OUTPUT else "user"
        if not getattr(config.rails, self._rail_type.value).flows:
            raise NemoConfigError(f"the NeMo config has no {self._rail_type.value} rails to run at stage {stage}")
        self._guardrails = Guardrails(config, require_iorails=True)
        # In front of IORails' bounded queue: a burst waits here (bounded by the rail's timeout)
        # instead of being rejected there.
        self._slots = asyncio.Semaphore(min(max_concurrency, IORAILS_QUEUE_DEPTH))
        self._starting = asyncio.Lock()
        logging.getLogger("nemoguardrails").setLevel(logging.WARNING)  # NeMo logs every check at INFO

    async def check(self, content: str) -> Verdict:
        from nemoguardrails.guardrails.iorails import INTERNAL_ERROR_MESSAGE
        from nemoguardrails.rails.llm.options import RailStatus

        if not self._guardrails._started:  # start once, even when the first checks arrive together
            async with self._starting:
                await self._guardrails.startup()
        async with self._slots:
            result = await self._guardrails.check_async([{"role": self._role, "content": content}], [self._rail_type])
        rail = result.rail or "a NeMo rail"
        if result.status == RailStatus.BLOCKED:
            if result.content == INTERNAL_ERROR_MESSAGE:  # the rail broke (e.g. its model is down): fail closed
                return Verdict.block(f"NeMo Guardrails rail {rail!r} failed")
            return Verdict.block(f"NeMo Guardrails rail {rail!r} blocked it")
        if result.status == RailStatus.MODIFIED and result.content != content:
            return Verdict.modify(result.content, f"NeMo Guardrails rail {rail!r} rewrote it")
        return Verdict.allow()

    async def close(self) -> None:
        await self._guardrails.shutdown()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
