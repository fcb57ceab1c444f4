"""Rails configuration from `policies/rails.yaml`: which rails run at each stage, with what settings.

Loading validates every entry and reports every error at once, each with file and line; nothing
half-valid is ever returned. `RailsConfigError.errors` lists them for `sentrail serve` to print.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from .base import Stage
from .builtin.classifier import ClassifierConfigError, build_classifier
from .builtin.detect import PII, pii_rail, secrets_rail
from .builtin.injection import InjectionRail
from .builtin.limits import DenyRail, LengthRail
from .builtin.nemo import IORAILS_QUEUE_DEPTH, ModelResolver, NemoConfigError, NemoRail, load_nemo_config
from .pipeline import Configured


class RailsConfigError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Common(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    shadow: bool = False
    action: Literal["block", "label"] = "block"  # label: the text passes, the label lands on the session
    label: str | None = None  # the label `action: label` adds (default: the rail's kind, e.g. `injection`)


class LengthSpec(_Common, tag_field="rail", tag="length"):
    max_chars: int = 100_000


class DenySpec(_Common, tag_field="rail", tag="deny"):
    patterns: list[str] = []
    keywords: list[str] = []


class SecretsSpec(_Common, tag_field="rail", tag="secrets"):
    action: Literal["block", "mask", "label"] = "block"


class PiiSpec(_Common, tag_field="rail", tag="pii"):
    action: Literal["block", "mask", "label"] = "mask"
    kinds: list[str] = []


class InjectionSpec(_Common, tag_field="rail", tag="injection"):
    threshold: float = 0.5


class NemoSpec(_Common, tag_field="rail", tag="nemo"):
    config: str = ""  # a NeMo Guardrails config folder, relative to the rails file
    allow_python: bool = False
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=IORAILS_QUEUE_DEPTH)] = 128
    timeout_s: float = 10.0  # only here: the built-in rails are CPU checks that run inline (no timeout)


class ClassifierSpec(_Common, tag_field="rail", tag="classifier"):
    """A local guard model (rails/builtin/classifier.py): a Hugging Face directory or an ONNX export."""

    model: str = ""  # the model directory, relative to the rails file (or absolute); never downloaded
    labels: list[str | int] = []  # the labels that count as attacks (id2label names or indices); default: non-benign
    threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5  # attack probability, max over windows
    window: Annotated[int, msgspec.Meta(ge=4, le=8192)] = 512  # tokens per window, special tokens included
    overlap: Annotated[int, msgspec.Meta(ge=0)] = 64  # tokens each window shares with the one before
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1  # windows per model call (CPU: 1 costs least)
    max_wait_ms: Annotated[float, msgspec.Meta(ge=0.0, le=1000.0)] = 2.0  # how long a batch waits for more windows
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1  # batches run at once
    threads: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0  # ONNX Runtime threads per batch (0: its default)
    runtime: Literal["auto", "onnx", "torch"] = "auto"  # auto: ONNX Runtime when the folder has model.onnx
    timeout_s: Annotated[float, msgspec.Meta(gt=0.0)] = 2.0  # a check that takes longer blocks (fail closed)


RailSpec = LengthSpec | DenySpec | SecretsSpec | PiiSpec | InjectionSpec | NemoSpec | ClassifierSpec


class Stages(msgspec.Struct, forbid_unknown_fields=True):
    input: list[RailSpec] = []
    tool_result: list[RailSpec] = []
    output: list[RailSpec] = []


class StreamingSpec(msgspec.Struct, forbid_unknown_fields=True):
    """Output rails on streams whose rails cannot report a frontier (`Rail.stream`; e.g. NeMo): text is
    checked in windows of `window` characters and the last `overlap` characters are held back; a phrase or
    entity up to `overlap` long never leaks in part. Built-in rails hold back only what could still match."""

    window: Annotated[int, msgspec.Meta(ge=1)] = 64
    overlap: Annotated[int, msgspec.Meta(ge=0)] = 128
    frontier: bool = True  # false: the fixed windows for every stream, even when every rail reports a frontier


class RailsConfig(msgspec.Struct, forbid_unknown_fields=True):
    version: Literal[1] = 1
    refusal: str = "I can't help with that."
    streaming: StreamingSpec = msgspec.field(default_factory=StreamingSpec)
    stages: Stages = msgspec.field(default_factory=Stages)


_BUILDERS: dict[type, Callable[[Any, str, Stage], Any]] = {
    LengthSpec: lambda s, n, st: LengthRail(n, st, s.max_chars),
    DenySpec: lambda s, n, st: DenyRail(n, st, s.patterns, s.keywords),
    SecretsSpec: lambda s, n, st: secrets_rail(n, st, "block" if s.action == "label" else s.action),
    PiiSpec: lambda s, n, st: pii_rail(n, st, "block" if s.action == "label" else s.action, s.kinds),
    InjectionSpec: lambda s, n, st: InjectionRail(n, st, s.threshold),
}


def load_rails(path: Path, resolve: ModelResolver | None = None) -> tuple[RailsConfig, list[Configured]]:
    """Parse, validate and build; raise `RailsConfigError` listing every problem with file:line.
    `resolve` maps Sentrail model ids to engine endpoints for LLM-backed NeMo rails."""
    node, raw = read_yaml(path)
    errors: list[str] = []
    stages = raw.get("stages") if isinstance(raw, dict) else None
    stages = stages if isinstance(stages, dict) else {}
    # Validate each rail entry on its own so that every bad entry is reported, not just the first.
    for stage in Stage:
        entries = stages.get(stage.value)
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            try:
                spec = msgspec.convert(entry, RailSpec)
                if spec.label is not None and spec.action != "label":
                    raise msgspec.ValidationError("`label:` is only used with `action: label`")
                if isinstance(entry, dict) and entry.get("rail") == "pii":
                    unknown = set(entry.get("kinds") or ()) - set(PII)
                    if unknown:
                        raise msgspec.ValidationError(f"unknown PII kinds {sorted(unknown)}; known: {sorted(PII)}")
                for pattern in entry.get("patterns") or () if isinstance(entry, dict) else ():
                    _compile(pattern)
            except (msgspec.ValidationError, ValueError) as exc:
                errors.append(_entry_error(path, node, stage, index, exc))
    if not errors:
        try:
            config = msgspec.convert(raw if raw is not None else {}, RailsConfig)
        except msgspec.ValidationError as exc:
            errors.append(f"{path}:{_line(node, _path_of(exc))}: {exc}")
    if errors:
        raise RailsConfigError(errors)
    rails: list[Configured] = []
    for stage in Stage:
        for index, spec in enumerate(getattr(config.stages, stage.value)):
            name = spec.name or f"{stage.value}.{type(spec).__struct_config__.tag}"
            try:
                if isinstance(spec, NemoSpec):
                    if not spec.config:
                        raise NemoConfigError("`config:` is required: a NeMo Guardrails config folder")
                    nemo = load_nemo_config(nemo_folder(path, spec), spec.allow_python, resolve)
                    rail = NemoRail(name, stage, nemo, spec.max_concurrency)
                elif isinstance(spec, ClassifierSpec):
                    rail = build_classifier(name, stage, spec, path.parent)
                else:
                    rail = _BUILDERS[type(spec)](spec, name, stage)
            except (NemoConfigError, ClassifierConfigError) as exc:
                errors.append(_entry_error(path, node, stage, index, exc, getattr(exc, "key", None)))
                continue
            timeout_s = spec.timeout_s if isinstance(spec, NemoSpec | ClassifierSpec) else Configured.timeout_s
            label = (spec.label or type(spec).__struct_config__.tag) if spec.action == "label" else None
            rails.append(Configured(rail, spec.shadow, timeout_s, label))
    if errors:
        raise RailsConfigError(errors)
    return config, rails


def read_yaml(path: Path) -> tuple[Any, Any]:
    """(node tree for line numbers, parsed data); `RailsConfigError` with file:line when unreadable."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RailsConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        return yaml.compose(text), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RailsConfigError([f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None


def _entry_error(path: Path, node: Any, stage: Stage, index: int, exc: Exception, key: str | None = None) -> str:
    at: list[str | int] = ["stages", stage.value, index, *([key] if key else [])]
    return f"{path}:{_line(node, at)}: stages.{stage.value}[{index}]: {exc}"


def nemo_folder(path: Path, spec: NemoSpec) -> Path:
    return (path.parent / spec.config).resolve()


def referenced_files(path: Path, config: RailsConfig) -> list[Path]:
    """The rails file and every file of the NeMo configs it uses, in a stable order (for its version)."""
    files = [path]
    for stage in Stage:
        for spec in getattr(config.stages, stage.value):
            if isinstance(spec, NemoSpec):
                files.extend(sorted(p for p in nemo_folder(path, spec).rglob("*") if p.is_file()))
            elif isinstance(spec, ClassifierSpec):  # what names the model (its weights are too large to hash)
                model = (path.parent / spec.model).resolve()
                files.extend(model / n for n in ("config.json", "tokenizer.json") if (model / n).is_file())
    return files


def _compile(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None


def _path_of(exc: msgspec.ValidationError) -> list[str | int]:
    text = str(exc)
    start = text.rfind("- at `$")
    if start < 0:
        return []
    parts: list[str | int] = []
    for token in text[start + 7 :].rstrip("`").replace("[", ".").replace("]", "").split("."):
        if token:
            parts.append(int(token) if token.isdigit() else token)
    return parts


def _line(node: Any, path: list[str | int]) -> int:
    """1-based line of the YAML node at `path` (or of the deepest ancestor that exists)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line
