"""The classifier rail's runtime: a local text-classification model (a Hugging Face directory run with torch, or
an ONNX export run with ONNX Runtime), its tokenizer cut into overlapping token windows, and a micro-batcher.

One model is loaded once per process and directory (`load_model`, shared while a rail holds it), and one
batcher per model and batching settings (`batcher`). The batcher is a thread of its own: checks from any event
loop (or thread) hand it texts; it tokenizes them into windows, gathers windows from concurrent checks for up to
`max_wait_s` after the first or until `max_batch` are there, and runs each batch in a worker pool of `workers`
threads (torch and ONNX Runtime release the GIL while computing). Nothing here is ever downloaded.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TOKENIZER = "tokenizer.json"
ONNX_FILES = ("model.onnx", "onnx/model.onnx")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


class ModelError(ValueError):
    """A model directory that cannot be used; the message says what is wrong and what to do."""


Scored = list[tuple[int, int, np.ndarray]]  # per window: character start, end, label probabilities


class Tokens:
    """The model's tokenizer (`tokenizer.json`, the `tokenizers` library) and its special tokens, for windows."""

    def __init__(self, path: Path, pad_id: int | None) -> None:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelError(f"{path}: not a tokenizers file: {exc}") from None
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        bare = tokenizer.encode("a", add_special_tokens=False).ids
        full = tokenizer.encode("a", add_special_tokens=True).ids
        at = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None)
        self.prefix, self.suffix = (full[:at], full[at + len(bare) :]) if at is not None and bare else ([], [])
        self.pad_id = pad_id if pad_id is not None else (tokenizer.token_to_id("[PAD]") or 0)

    @property
    def specials(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def windows(self, text: str, size: int, overlap: int) -> list[tuple[int, int, list[int]]]:
        """(character start, end, token ids with the special tokens) of each window of at most `size` tokens,
        each sharing `overlap` tokens with the one before; none for a text without tokens."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        ids, offsets = encoding.ids, encoding.offsets
        body = size - self.specials
        stride = body - overlap
        found, start = [], 0
        while start < len(ids):
            end = min(start + body, len(ids))
            found.append((offsets[start][0], offsets[end - 1][1], self.prefix + ids[start:end] + self.suffix))
            if end == len(ids):
                break
            start += stride
        return found


@dataclass
class Model:
    """A loaded model: its tokenizer, label names (id2label order), and `run(ids, mask) -> probabilities`."""

    directory: Path
    runtime: str  # onnx | torch
    tokens: Tokens
    labels: list[str]
    max_positions: int | None
    run: Callable[[np.ndarray, np.ndarray], np.ndarray]


_LOCK = threading.Lock()
_MODELS: weakref.WeakValueDictionary[tuple, Model] = weakref.WeakValueDictionary()
_BATCHERS: weakref.WeakValueDictionary[tuple, Batcher] = weakref.WeakValueDictionary()


def load_model(directory: Path, runtime: str = "auto", threads: int = 0) -> Model:
    """The model in `directory`, loaded once per process while a rail holds it (a file that changed, by size
    or modification time, loads it again). `runtime`: onnx, torch, or auto (onnx when model.onnx is there)."""
    if not directory.is_dir():
        raise ModelError(f"{directory}: no such model directory (models are never downloaded: point at a local one)")
    if runtime == "auto":
        runtime = "onnx" if _onnx_file(directory) is not None else "torch"
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.rglob("*")) if p.is_file())
    key = (str(directory), runtime, threads, stamp)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _load(directory, runtime, threads)
            _MODELS[key] = model
    return model


def _onnx_file(directory: Path) -> Path | None:
    return next((directory / name for name in ONNX_FILES if (directory / name).is_file()), None)


def _load(directory: Path, runtime: str, threads: int) -> Model:
    config: dict[str, Any] = {}
    config_path = directory / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except ValueError as exc:
            raise ModelError(f"{config_path}: not valid JSON: {exc}") from None
    tokenizer = directory / TOKENIZER
    if not tokenizer.is_file():
        raise ModelError(
            f"{directory}: no {TOKENIZER} (a fast tokenizer: on a machine with transformers, "
            f"AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR) writes one)"
        )
    tokens = Tokens(tokenizer, config.get("pad_token_id"))
    if runtime == "onnx":
        run, count = _onnx(directory, threads)
    elif runtime == "torch":
        run, count = _torch(directory, config)
    else:
        raise ModelError(f"unknown runtime {runtime!r}: onnx, torch or auto")
    labels = _label_names(config, count, directory)
    return Model(directory, runtime, tokens, labels, config.get("max_position_embeddings"), run)


def _label_names(config: dict[str, Any], count: int | None, directory: Path) -> list[str]:
    raw = config.get("id2label")
    if isinstance(raw, dict) and raw:
        try:
            names = [str(raw[k]) for k in sorted(raw, key=int)]
        except (ValueError, KeyError):
            raise ModelError(f"{directory / 'config.json'}: id2label keys must be 0..n-1") from None
    elif count is not None:
        names = [f"LABEL_{i}" for i in range(count)]
    else:
        raise ModelError(f"{directory}: no config.json with id2label, and the model does not say how many labels")
    if count is not None and count != len(names):
        raise ModelError(f"{directory}: the model has {count} outputs but id2label names {len(names)} labels")
    if len(names) < 2:
        raise ModelError(f"{directory}: a classifier with {len(names)} label(s); at least two are needed (softmax)")
    return names


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _onnx(directory: Path, threads: int) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], int | None]:
    import onnxruntime

    path = _onnx_file(directory)
    if path is None:
        raise ModelError(f"{directory}: no model.onnx (runtime: onnx)")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads leave the CPU alone
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: ONNX Runtime cannot load it: {exc}") from None
    types = {i.name: np.int32 if i.type == "tensor(int32)" else np.int64 for i in session.get_inputs()}
    if "input_ids" not in types:
        raise ModelError(f"{path}: the model has no input_ids input (inputs: {sorted(types)})")
    width = session.get_outputs()[0].shape[-1]

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feed = {name: value.astype(types[name], copy=False) for name, value in feed.items() if name in types}
        return _softmax(session.run(None, feed)[0].astype(np.float32))

    return run, width if isinstance(width, int) else None


def _torch(directory: Path, config: dict[str, Any]) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], int]:
    if not config:
        raise ModelError(f"{directory}: no config.json (a Hugging Face model directory needs one)")
    if not any((directory / name).is_file() for name in WEIGHTS):
        found = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        hint = f" ({', '.join(found)} are pickles, never loaded: convert them to safetensors)" if found else ""
        raise ModelError(f"{directory}: no model.safetensors{hint}")
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no progress bars in the gateway's output
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(directory), local_files_only=True, use_safetensors=True, trust_remote_code=False
        ).eval()
    except Exception as exc:
        raise ModelError(f"{directory}: transformers cannot load it as a sequence classifier: {exc}") from None
    finally:
        if shown:
            hf_logging.enable_progress_bar()

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
        return _softmax(logits.float().numpy())

    return run, int(model.config.num_labels)


class _Request:
    __slots__ = ("future", "left", "overlap", "scored", "size", "text")

    def __init__(self, text: str, size: int, overlap: int) -> None:
        self.future: Future[Scored] = Future()
        self.text, self.size, self.overlap = text, size, overlap
        self.scored: list[Any] = []
        self.left = 0


@dataclass
class Stats:
    calls: int = 0  # model calls (batches run)
    windows: int = 0  # windows scored


class Batcher:
    """Scores texts with one model, batching windows across concurrent callers (see the module docstring)."""

    def __init__(self, model: Model, max_batch: int = 1, max_wait_s: float = 0.002, workers: int = 1) -> None:
        self.model, self.stats = model, Stats()
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        thread = threading.Thread(
            target=_collect,
            args=(self._queue, model, self.stats, max_batch, max_wait_s, workers),
            name=f"classifier {model.directory.name}",
            daemon=True,
        )
        thread.start()
        weakref.finalize(self, self._queue.put, None)  # the last rail holding it is gone: the thread ends

    def submit(self, text: str, size: int, overlap: int) -> Future[Scored]:
        request = _Request(text, size, overlap)
        self._queue.put(request)
        return request.future


def batcher(model: Model, max_batch: int, max_wait_s: float, workers: int) -> Batcher:
    """The batcher of this model with these settings, shared by every rail that asks for it."""
    key = (id(model), max_batch, max_wait_s, workers)
    with _LOCK:
        found = _BATCHERS.get(key)
        if found is None or found.model is not model:
            found = Batcher(model, max_batch, max_wait_s, workers)
            _BATCHERS[key] = found
    return found


def _collect(
    inbox: queue.SimpleQueue[_Request | None],
    model: Model,
    stats: Stats,
    max_batch: int,
    max_wait_s: float,
    workers: int,
) -> None:
    """The batcher's thread: take requests, cut them into windows, run batches on a free worker."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="classifier")
    slots = threading.Semaphore(workers)
    pending: deque[tuple[_Request, int]] = deque()
    lock = threading.Lock()
    while True:
        slots.acquire()  # a free worker first: while all are busy, requests queue up and the next batch grows
        deadline = time.monotonic() + max_wait_s
        while not pending:
            request = inbox.get()
            if request is None:
                pool.shutdown(wait=False)
                return
            _take(request, model, pending)
            deadline = time.monotonic() + max_wait_s
        while len(pending) < max_batch:
            left = deadline - time.monotonic()
            try:
                request = inbox.get(timeout=left) if left > 0 else inbox.get_nowait()
            except queue.Empty:
                break
            if request is None:
                pool.shutdown(wait=False)
                return
            _take(request, model, pending)
        batch = []
        while pending and len(batch) < max_batch:
            request, index = pending.popleft()
            if not request.future.done():  # its check timed out, was cancelled or failed: nothing to score
                batch.append((request, index))
        if not batch:
            slots.release()
            continue
        pool.submit(_run, model, stats, batch, lock).add_done_callback(lambda _: slots.release())


def _take(request: _Request, model: Model, pending: deque[tuple[_Request, int]]) -> None:
    try:
        windows = model.tokens.windows(request.text, request.size, request.overlap)
    except Exception as exc:
        _settle(request.future, exc)
        return
    if not windows:
        _settle(request.future, [])
        return
    request.scored, request.left = windows, len(windows)
    pending.extend((request, index) for index in range(len(windows)))


def _run(model: Model, stats: Stats, batch: list[tuple[_Request, int]], lock: threading.Lock) -> None:
    try:
        width = max(len(request.scored[index][2]) for request, index in batch)
        ids = np.full((len(batch), width), model.tokens.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, (request, index) in enumerate(batch):
            window = request.scored[index][2]
            ids[row, : len(window)] = window
            mask[row, : len(window)] = 1
        probabilities = model.run(ids, mask)
        if probabilities.shape[0] != len(batch):
            raise ValueError(f"the model answered {probabilities.shape[0]} rows for {len(batch)} windows")
    except Exception as exc:  # every check in the batch fails: its rail blocks (fail closed)
        for request, _ in batch:
            _settle(request.future, exc)
        return
    with lock:
        stats.calls += 1
        stats.windows += len(batch)
        for row, (request, index) in enumerate(batch):
            start, end, _ = request.scored[index]
            request.scored[index] = (start, end, probabilities[row])
            request.left -= 1
            if request.left == 0:
                _settle(request.future, request.scored)


def _settle(future: Future[Scored], outcome: Scored | BaseException) -> None:
    if future.done():
        return
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:  # cancelled meanwhile
        pass
