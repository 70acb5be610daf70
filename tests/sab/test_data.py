"""Readers read tiny files in the real formats; missing or malformed files fail with one clear line;
checksums are verified; every new task's loss falls on a fixed batch within a few dozen steps."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sab.data.readers import DataError, read_cifar_batch, read_idx
from sab.data.registry import DATASETS, Dataset, Remote, fetch
from sab.methods import METHODS, build_model
from sab.tasks import TASKS, make_task


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def write_mnist(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = (rng.random((n, 28, 28)) * 50).astype(np.uint8)
        images[:, -1, :] = (25 * labels)[:, None]  # the label in the last row's brightness: learnable in a few steps
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)


def write_cifar(folder: Path, n: int = 20) -> None:
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, n).tolist()
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f)


def test_idx_round_trip_and_truncation(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", array)
    assert read_idx(tmp_path / "a-idx3-ubyte").numpy().tolist() == array.tolist()
    write_idx(tmp_path / "b-idx3-ubyte.gz", array, gz=True)
    assert read_idx(tmp_path / "b-idx3-ubyte.gz").shape == (2, 3, 4)
    (tmp_path / "c-idx3-ubyte").write_bytes((tmp_path / "a-idx3-ubyte").read_bytes()[:-5])
    with pytest.raises(DataError, match=r"c-idx3-ubyte: truncated IDX file: header says \(2, 3, 4\) = 24 bytes, found 19"):
        read_idx(tmp_path / "c-idx3-ubyte")
    (tmp_path / "d").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        read_idx(tmp_path / "d")


def test_mnist_tasks_read_idx_files(tmp_path):
    write_mnist(tmp_path)
    pixel = make_task("pixel_mnist", 784, str(tmp_path))
    batch = pixel.sample(4, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (4, 784, 1) and 0 <= batch.inputs.min() and batch.inputs.max() <= 1
    permuted = make_task("permuted_mnist", 784, str(tmp_path), permutation_seed=3)
    again = make_task("permuted_mnist", 784, str(tmp_path), permutation_seed=3)
    other = make_task("permuted_mnist", 784, str(tmp_path), permutation_seed=4)
    assert torch.equal(permuted.permutation, again.permutation)  # fixed by its seed
    assert not torch.equal(permuted.permutation, other.permutation)
    test = pixel.evaluation("test", 8, 10, 0)
    assert sum(len(b.targets) for b in test) == 20  # the whole (tiny) test split


def test_missing_or_wrong_length_mnist_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: missing; expected MNIST IDX files"):
        make_task("pixel_mnist", 784, str(tmp_path))
    with pytest.raises(DataError, match="no data_dir given"):
        make_task("pixel_mnist", 784, None)
    write_mnist(tmp_path)
    with pytest.raises(ValueError, match="has sequences of 784 steps; set seq_len: 784"):
        make_task("pixel_mnist", 100, str(tmp_path))


def test_cifar_batches_and_refusal_of_code_in_pickles(tmp_path):
    write_cifar(tmp_path)
    task = make_task("cifar10", 1024, str(tmp_path))
    batch = task.sample(3, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (3, 1024, 3)
    images, labels = read_cifar_batch(tmp_path / "test_batch")
    assert images.shape == (20, 3072) and labels.shape == (20,)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        make_task("cifar10", 1024, str(tmp_path))
    (tmp_path / "data_batch_1").write_bytes(b"\x80\x04 truncated")
    with pytest.raises(DataError, match="data_batch_1: not a CIFAR-10 python batch"):
        make_task("cifar10", 1024, str(tmp_path))


def test_text_corpora(tmp_path):
    text = ("the quick brown fox jumps over the lazy dog " * 400).strip()
    (tmp_path / "text8").write_text(text)
    task = make_task("text8", 20, str(tmp_path))
    batch = task.sample(2, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (2, 20, task.input_size) and batch.targets.shape == (2, 20)
    decoded = "".join(task.vocabulary[i] for i in batch.inputs[0].argmax(-1).tolist())
    assert decoded in text  # a contiguous chunk
    assert torch.equal(batch.inputs[0, 1:].argmax(-1), batch.targets[0, :-1])  # next character
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.char.{split}.txt").write_text("t h e _ c a t\na _ d o g\n" * 50)
    ptb = make_task("ptb", 10, str(tmp_path))
    assert "_" in ptb.vocabulary and "\n" in ptb.vocabulary
    (tmp_path / "ptb.char.test.txt").write_text("z e b r a\n" * 50)
    with pytest.raises(DataError, match=r"characters \['b', 'r', 'z'\] of the test text never occur in the training text"):
        make_task("ptb", 10, str(tmp_path))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "text8").write_bytes(b"")
    with pytest.raises(DataError, match="text8: empty"):
        make_task("text8", 10, str(tmp_path / "empty"))


def test_fetch_downloads_verifies_and_unpacks(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    source.mkdir()
    member = source / "ptb.char.train.txt"
    member.write_text("a b c\n")
    with tarfile.open(source / "bundle.tgz", "w:gz") as tar:
        tar.add(member, arcname="./bundle/ptb.char.train.txt")
    good = hashlib.md5((source / "bundle.tgz").read_bytes()).hexdigest()
    remote = Remote((source / "bundle.tgz").as_uri(), "bundle.tgz", md5=good, extract=("./bundle/ptb.char.train.txt",))
    monkeypatch.setitem(DATASETS, "tiny", Dataset(files=(remote,), expects=("ptb.char.train.txt",)))
    assert fetch("tiny", tmp_path / "out", log=lambda *_: None) == []
    assert (tmp_path / "out" / "ptb.char.train.txt").read_text() == "a b c\n"

    bad = Remote(remote.url, "bundle.tgz", md5="0" * 32)
    monkeypatch.setitem(DATASETS, "tiny", Dataset(files=(bad,), expects=()))
    with pytest.raises(DataError, match=f"md5 {good} does not match the published 0000"):
        fetch("tiny", tmp_path / "other", log=lambda *_: None)
    missing = Remote((source / "nope.tgz").as_uri(), "nope.tgz")
    monkeypatch.setitem(DATASETS, "tiny", Dataset(files=(missing,), expects=()))
    with pytest.raises(DataError, match="cannot download .*nope.tgz .*copy nope.tgz into"):
        fetch("tiny", tmp_path / "third", log=lambda *_: None)


def test_fetch_cli_unknown_dataset_is_one_line(capsys):
    from sab.data.__main__ import main

    assert main(["fetch", "imagenet", "--to", "/tmp/x"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown dataset 'imagenet'; valid: mnist, cifar10, text8, ptb"


def _falls(task_name: str, seq_len: int, data_dir: str | None, method: str = "sab", steps: int = 60) -> tuple[float, float]:
    """The loss on one fixed batch before training, and the lowest of its last 10 steps."""
    torch.manual_seed(0)
    task = make_task(task_name, seq_len, data_dir)
    model = build_model(method, task.input_size, 32, task.output_size, k_top=3, k_att=4)
    batch = task.sample(8, torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        losses.append(METHODS[method].engine(model, batch, task.loss, 8).loss)
        optimizer.step()
    return losses[0], min(losses[-10:])


@pytest.mark.parametrize("name,seq_len", [("pixel_digits", 64), ("permuted_digits", 64), ("mnist1d", 40), ("pydoc_chars", 30)])
def test_bundled_task_loss_falls_on_a_fixed_batch(name, seq_len):
    first, last = _falls(name, seq_len, None)
    assert last < 0.8 * first, (first, last)


def test_file_task_losses_fall_on_a_fixed_batch(tmp_path):
    write_mnist(tmp_path, n_train=40)
    first, last = _falls("pixel_mnist", 784, str(tmp_path), method="bptt", steps=40)
    assert last < 0.8 * first
    write_cifar(tmp_path)
    first, last = _falls("cifar10", 1024, str(tmp_path), method="transformer", steps=30)
    assert last < 0.8 * first
    (tmp_path / "text8").write_text(("abcdefgh " * 300).strip())
    first, last = _falls("text8", 24, str(tmp_path), steps=40)
    assert last < 0.8 * first


def test_every_task_is_known():
    assert set(TASKS) >= {
        "copy",
        "adding",
        "pixel_mnist",
        "permuted_mnist",
        "cifar10",
        "text8",
        "ptb",
        "pixel_digits",
        "permuted_digits",
        "mnist1d",
        "pydoc_chars",
    }
