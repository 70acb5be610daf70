"""Readers of the standard dataset files, from a path the user gives (nothing is downloaded here).

Each fails with one DataError line naming the path and the expected format, before training.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import torch


class DataError(ValueError):
    """A missing or malformed dataset file; the message names the path and the expected format."""


def find(directory: str | Path | None, names: tuple[str, ...], what: str, dataset: str = "") -> Path:
    """The first of `names` (tried also with .gz) inside directory, or a DataError saying what was
    expected and the command that fetches (or verifies) `dataset` there."""
    folder = Path(directory).expanduser() if directory is not None else Path("data") / (dataset or "NAME")
    fix = (
        f"; get it with `python -m sab.data fetch {dataset} --to {folder}` (or check copied files with "
        f"`python -m sab.data verify {dataset} --in {folder}`)"
        if dataset
        else ""
    )
    if directory is None:
        raise DataError(f"{what}: no data_dir given; set data_dir to the folder holding {names[0]}{fix}")
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{folder / names[0]}: missing; expected {what}{fix}")


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (MNIST's format: magic 0x0000, type 0x08 = ubyte, ndim, big-endian int32 dims, data)."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(f"{path}: not an unsigned-byte IDX file (expected magic bytes 00 00 08 <ndim>)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header (expected {ndim} big-endian int32 dimensions)")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    payload = raw[4 + 4 * ndim :]
    expected = 1
    for d in dims:
        expected *= d
    if len(payload) != expected:
        raise DataError(f"{path}: truncated IDX file: header says {tuple(dims)} = {expected} bytes, found {len(payload)}")
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(*dims)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR's batches (dicts of bytes, lists and numpy arrays) and nothing that runs code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 python batch: images (N, 3072) uint8 (R, G, B planes of 32x32) and labels (N,)."""
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(io.BytesIO(f.read()), encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, ImportError) as error:
        raise DataError(
            f"{path}: not a CIFAR-10 python batch (a pickled dict with b'data' (N, 3072) uint8 and b'labels'): {error}"
        ) from None
    images = torch.as_tensor(data, dtype=torch.uint8)
    if images.ndim != 2 or images.shape[1] != 3072 or len(labels) != images.shape[0]:
        raise DataError(f"{path}: CIFAR-10 batch of shape {tuple(images.shape)} with {len(labels)} labels; expected (N, 3072) and N labels")
    return images, torch.as_tensor(list(labels), dtype=torch.long)


def read_text(path: Path, what: str) -> str:
    """A text file as a string (ASCII/UTF-8); an empty or binary file is a DataError."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; expected {what}") from None
    if not text.strip():
        raise DataError(f"{path}: empty; expected {what}")
    return text
