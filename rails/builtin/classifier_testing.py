"""Guard-model directories built locally, with no download, for tests and benchmarks of `rail: classifier`.

`build_model` writes a Hugging Face directory (config.json, tokenizer.json, model.safetensors) of a
`DebertaV2ForSequenceClassification` — the architecture of Prompt Guard 2 and the common DeBERTa-v3
prompt-injection classifiers — with a WordPiece tokenizer trained here on generated sentences, and optionally
its ONNX export. Weights are random, or (with `trigger`) trained for a few steps so that a text scores as an
attack exactly when it contains the trigger word; `bias` instead pins the head so one label always wins.
`SIZES` holds the real models' hyperparameters (random weights: for latency, not for detection).
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LABELS = {0: "SAFE", 1: "INJECTION"}
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    # Prompt Guard 2 22M ~ DeBERTa-v3-xsmall; 86M ~ mDeBERTa-v3-base (their published hyperparameters)
    "22m": {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
        "vocab_size": 128_100,
    },
    "86m": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "vocab_size": 251_000,
    },
}
_SUBJECTS = (
    "the report|our team|the invoice|this page|the weather|a customer|the meeting|the library|my order|"
    "the hotel|the flight|your account|the recipe|the garden|the museum|the project"
)
_VERBS = "describes|mentions|lists|confirms|updates|summarises|shows|includes|explains|covers"
_OBJECTS = (
    "the schedule for monday|three new items|a refund of twelve euros|the opening hours|two rooms with a view|"
    "the delivery address|a short history of the town|the quarterly numbers|a list of ingredients|"
    "the terms of service|the seating plan|a map of the area|the latest release notes"
)


_FIELDS = "id|name|subject|body|sender|from|to|count|note|price|items|title|notes|date|status|url|email|report|rooms"


def distractor(rng: random.Random) -> str:
    """A word the toy classifier must learn to ignore: a field name, a random string, an address or a number."""
    kind = rng.randrange(5)
    if kind == 0:
        return rng.choice(_FIELDS.split("|"))
    if kind == 4:
        return "".join(rng.choice("$.:/?=&-_[]{}#%+,;'\"") for _ in range(rng.randint(1, 6)))
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 10)))
    if kind == 1:
        return letters
    return f"{letters}@example.com" if kind == 2 else str(rng.randint(0, 99999))


def sentences(count: int, seed: int = 0) -> list[str]:
    """Plain generated sentences (the tokenizer's and the toy classifier's training text)."""
    rng = random.Random(seed)
    subjects, verbs, objects = _SUBJECTS.split("|"), _VERBS.split("|"), _OBJECTS.split("|")
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(count)]


def train_tokenizer(texts: list[str], vocab_size: int = 2000) -> Any:
    """A WordPiece tokenizer with BERT-style [CLS] ... [SEP] (what DeBERTa-v3 adds too), its vocabulary chosen
    deterministically: the special tokens, every printable ASCII character (and its `##` continuation), then the
    most frequent words of `texts` (ties in alphabetical order). The same texts always give the same ids."""
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    splitter = pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for t in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(t)))
    chars = [chr(c) for c in range(33, 127)]
    vocab = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    known = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if len(vocab) >= vocab_size:
            break
        if word not in known:
            vocab.append(word)
            known.add(word)
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = splitter
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return tokenizer


def deberta_config(size: str, vocab_size: int, max_positions: int = 512) -> Any:
    from transformers import DebertaV2Config

    shape = dict(SIZES[size])
    shape["vocab_size"] = max(shape.get("vocab_size", 0), vocab_size)
    return DebertaV2Config(
        **shape,
        max_position_embeddings=max_positions,
        type_vocab_size=0,
        relative_attention=True,
        position_buckets=256,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
        max_relative_positions=-1,
        id2label=dict(LABELS),
        label2id={v: k for k, v in LABELS.items()},
        pad_token_id=0,
    )


def build_model(
    directory: Path,
    size: str = "tiny",
    trigger: str | None = None,
    bias: float | None = None,
    onnx: bool = False,
    seed: int = 0,
    corpus: list[str] | None = None,
    vocab_size: int = 2000,
) -> Path:
    """Write the model directory (and `directory/onnx` with `onnx`); return `directory`. `trigger`: train the
    model to score texts holding that word as INJECTION; `bias`: set the head so INJECTION's logit leads SAFE's
    by `bias` whatever the text (positive: every text is an attack; negative: none is)."""
    import torch
    from transformers import DebertaV2ForSequenceClassification

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    noise = [json.dumps({distractor(rng): distractor(rng) for _ in range(4)}) for _ in range(200)]
    texts = (corpus or []) + sentences(400, seed) + noise + ([f"{trigger} {trigger}."] * 5 if trigger else [])
    tokenizer = train_tokenizer(texts, vocab_size)
    tokenizer.save(str(directory / "tokenizer.json"))
    torch.manual_seed(seed)
    model = DebertaV2ForSequenceClassification(deberta_config(size, tokenizer.get_vocab_size())).eval()
    if trigger is not None:
        _train(model, tokenizer, trigger, seed)
    if bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([0.0, bias]))
    model.save_pretrained(str(directory))
    if onnx:
        export_onnx(model, directory / "onnx")
        for name in ("config.json", "tokenizer.json"):
            (directory / "onnx" / name).write_bytes((directory / name).read_bytes())
    return directory


def _train(model: Any, tokenizer: Any, trigger: str, seed: int, steps: int = 150) -> None:
    """A few steps of AdamW on (sentence, 0) and (sentence with the trigger somewhere, 1)."""
    import torch

    rng = random.Random(seed + 1)
    plain = sentences(512, seed + 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same sums in the same order, the same model every time
    try:
        _steps(model, tokenizer, trigger, rng, plain, optimizer, steps)
    finally:
        torch.set_num_threads(threads)
    model.eval()


def _steps(model: Any, tokenizer: Any, trigger: str, rng: random.Random, plain: list[str], optimizer: Any,
           steps: int) -> None:  # fmt: skip
    import torch

    for _ in range(steps):
        texts, labels = [], []
        for _ in range(16):
            parts = [rng.choice(plain).split() for _ in range(rng.randint(1, 4))]
            for _ in range(rng.randint(0, 4)):
                words = rng.choice(parts)
                words.insert(rng.randrange(len(words) + 1), distractor(rng))
            attack = rng.random() < 0.5
            if attack:
                words = rng.choice(parts)
                words.insert(rng.randrange(len(words) + 1), trigger)
            labels.append(int(attack))
            lines = [" ".join(words) for words in parts]
            if rng.random() < 0.5:  # as a tool result: records with fields
                texts.append(json.dumps([{"id": rng.randint(1, 999), distractor(rng): line} for line in lines]))
            else:
                texts.append(" ".join(lines))
        ids, mask = _batch(tokenizer, texts)
        loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor(labels)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _batch(tokenizer: Any, texts: list[str]) -> tuple[Any, Any]:
    import torch

    encoded = [tokenizer.encode(t).ids for t in texts]
    width = max(len(e) for e in encoded)
    ids = torch.zeros((len(texts), width), dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = torch.tensor(e)
        mask[row, : len(e)] = 1
    return ids, mask


def export_onnx(model: Any, directory: Path) -> Path:
    """`model.onnx` in `directory` (torch.onnx's TorchScript exporter: the dynamo one wants onnxscript)."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    ids = torch.ones((2, 16), dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "logits": {0: "batch"}}
    with _without_onnx_package():
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids)),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes=axes,
        )
    return path


@contextlib.contextmanager
def _without_onnx_package() -> Iterator[None]:
    """torch's TorchScript exporter imports the `onnx` package only to insert onnxscript functions, of which a
    plain model has none; without the package, pass the exported bytes through unchanged."""
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        yield
        return
    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

    original = onnx_proto_utils._add_onnxscript_fn
    onnx_proto_utils._add_onnxscript_fn = lambda model_bytes, custom_opsets: model_bytes
    try:
        yield
    finally:
        onnx_proto_utils._add_onnxscript_fn = original


def describe(directory: Path) -> dict[str, Any]:
    config = json.loads((directory / "config.json").read_text())
    return {k: config.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")}
