"""Character language modelling: predict the next character at every step; bits per character.

    text8        data_dir/text8 (100M chars; the usual 90M / 5M / 5M split)
    ptb          data_dir/ptb.char.{train,valid,test}.txt (space-separated chars, '_' between words)
    pydoc_chars  Python's own `pydoc_data.topics` (~0.47M chars, 90 / 5 / 5): no download

Sequences are contiguous chunks of L + 1 characters (inputs one-hot, targets shifted by one):
random chunks for training, consecutive non-overlapping chunks from the split's start for evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sab.data.readers import DataError, find, read_text
from sab.tasks.base import Batch, Task, cross_entropy, one_hot


class CharLM(Task):
    """Next-character prediction on a corpus of three id tensors (train, val, test)."""

    def __init__(self, name: str, seq_len: int, splits: dict[str, Tensor], vocabulary: list[str]) -> None:
        if seq_len < 1:
            raise ValueError(f"{name} seq_len must be >= 1, got {seq_len}")
        shortest = min(len(ids) for ids in splits.values())
        if shortest <= seq_len + 1:
            raise DataError(f"{name}: a split of {shortest} characters is too short for seq_len={seq_len}")
        self.name, self.seq_len, self.splits, self.vocabulary = name, seq_len, splits, vocabulary
        self.input_size = self.output_size = len(vocabulary)

    @property
    def length(self) -> int:
        return self.seq_len

    @property
    def positions(self) -> Tensor:
        return torch.arange(self.seq_len)

    def _batch(self, ids: Tensor, starts: Tensor) -> Batch:
        window = ids[starts.unsqueeze(1) + torch.arange(self.seq_len + 1)]
        return Batch(one_hot(window[:, :-1], self.input_size), window[:, 1:], self.positions)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        ids = self.splits["train"]
        return self._batch(ids, torch.randint(0, len(ids) - self.seq_len - 1, (batch_size,), generator=generator))

    def evaluation(self, split: str, batch_size: int, n_batches: int, seed: int) -> list[Batch]:
        ids = self.splits["val" if split == "val" else "test"]
        starts = torch.arange(0, len(ids) - self.seq_len - 1, self.seq_len)[: batch_size * n_batches]
        return [self._batch(ids, starts[i : i + batch_size]) for i in range(0, len(starts), batch_size)]

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(logits, targets)

    def metrics(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        nats = self.loss(logits, targets).mean().item()
        return {"bpc": nats / math.log(2), "loss": nats, "accuracy": (logits.argmax(-1) == targets).float().mean().item()}

    def at_length(self, seq_len: int) -> Task:
        return CharLM(self.name, seq_len, self.splits, self.vocabulary)


def _encode(texts: dict[str, str]) -> tuple[dict[str, Tensor], list[str]]:
    """Character ids of each split, with the training text's vocabulary (vectorised over bytes)."""
    try:
        raw = {k: torch.frombuffer(bytearray(v.encode("ascii")), dtype=torch.uint8) for k, v in texts.items()}
    except UnicodeEncodeError:
        raw = None
    if raw is None:  # non-ASCII text: a Python-level mapping
        vocabulary = sorted(set(texts["train"]))
        index = {c: i for i, c in enumerate(vocabulary)}
        unknown = {c for part in ("val", "test") for c in texts[part] if c not in index}
        if unknown:
            raise DataError(f"characters {sorted(unknown)[:5]} of the validation/test text never occur in the training text")
        return {k: torch.tensor([index[c] for c in v], dtype=torch.long) for k, v in texts.items()}, vocabulary
    present = torch.zeros(256, dtype=torch.bool)
    present[raw["train"].long()] = True
    for part in ("val", "test"):
        if not present[raw[part].long()].all():
            missing = sorted({chr(b) for b in raw[part][~present[raw[part].long()]].tolist()})
            raise DataError(f"characters {missing[:5]} of the {part} text never occur in the training text")
    codes = torch.nonzero(present).flatten()
    lookup = torch.zeros(256, dtype=torch.long)
    lookup[codes] = torch.arange(len(codes))
    return {k: lookup[v.long()] for k, v in raw.items()}, [chr(c) for c in codes.tolist()]


def _split(text: str) -> dict[str, str]:
    n = len(text)
    a, b = int(n * 0.9), int(n * 0.95)
    return {"train": text[:a], "val": text[a:b], "test": text[b:]}


def text8(seq_len: int, data_dir: str | None) -> CharLM:
    """text8: 100M characters of a-z and space; train / valid / test = 90M / 5M / 5M."""
    text = read_text(find(data_dir, ("text8",), "the text8 file (lowercase a-z and spaces, from text8.zip)", "text8"), "text8 text")
    if len(text) > 10_000_000:
        splits = {"train": text[:90_000_000], "val": text[90_000_000:95_000_000], "test": text[95_000_000:]}
    else:  # a shortened file (tests, trials): the same proportions
        splits = _split(text)
    ids, vocabulary = _encode(splits)
    return CharLM("text8", seq_len, ids, vocabulary)


def ptb(seq_len: int, data_dir: str | None) -> CharLM:
    """Penn Treebank characters: each line's space-separated symbols, then an end-of-line."""
    what = "PTB character files ptb.char.train.txt / .valid.txt / .test.txt (from simple-examples.tgz)"
    texts = {}
    for split, suffix in (("train", "train"), ("val", "valid"), ("test", "test")):
        text = read_text(find(data_dir, (f"ptb.char.{suffix}.txt",), what, "ptb"), what)
        texts[split] = "".join("".join(line.split()) + "\n" for line in text.splitlines())
    ids, vocabulary = _encode(texts)
    return CharLM("ptb", seq_len, ids, vocabulary)


def pydoc_chars(seq_len: int, data_dir: str | None = None) -> CharLM:
    """Python's bundled pydoc topics as a character corpus (ships with the standard library)."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[key] for key in sorted(topics))
    ids, vocabulary = _encode(_split(text))
    return CharLM("pydoc_chars", seq_len, ids, vocabulary)


LOADERS: dict[str, Callable[..., CharLM]] = {"text8": text8, "ptb": ptb, "pydoc_chars": pydoc_chars}
