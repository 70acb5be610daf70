"""Where the standard files come from, and their published checksums; `fetch` downloads and verifies.

    python -m sab.data fetch mnist --to ~/data/mnist
    python -m sab.data verify mnist --in ~/data/mnist

Sources of the checksums: MNIST and CIFAR-10 md5s as torchvision publishes them; text8.zip's size
as the TensorFlow word2vec tutorial checks it and text8's sha256 as a public reproduction states it;
no published checksum is known for PTB's simple-examples.tgz (it is reported unverified).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from sab.data.readers import DataError


@dataclass(frozen=True)
class Remote:
    """One downloadable file and what it must match."""

    url: str
    name: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    extract: tuple[str, ...] = ()  # members to take out of an archive (archive paths)


@dataclass(frozen=True)
class Dataset:
    """A dataset: its files, and the files a reader then expects in the folder."""

    files: tuple[Remote, ...]
    expects: tuple[str, ...]
    after: dict[str, str] = field(default_factory=dict)  # extracted path -> checksum "sha256:..." of the extracted file


MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
DATASETS: dict[str, Dataset] = {
    "mnist": Dataset(
        files=(
            Remote(MNIST_URL + "train-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz", md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            Remote(MNIST_URL + "train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz", md5="d53e105ee54ea40749a09fcbcd1e9432"),
            Remote(MNIST_URL + "t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", md5="9fb629c4189551a2d022fa330f9573f3"),
            Remote(MNIST_URL + "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz", md5="ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        expects=("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    ),
    "cifar10": Dataset(
        files=(
            Remote(
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "cifar-10-python.tar.gz",
                md5="c58f30108f718f92721af3b95e74349a",
                extract=tuple(
                    f"cifar-10-batches-py/{n}"
                    for n in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
                ),
            ),
        ),  # fmt: skip
        expects=("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"),
    ),
    "text8": Dataset(
        files=(Remote("http://mattmahoney.net/dc/text8.zip", "text8.zip", size=31344016, extract=("text8",)),),
        expects=("text8",),
        after={"text8": "sha256:6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"},
    ),
    "ptb": Dataset(
        files=(
            Remote(
                "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
                "simple-examples.tgz",
                extract=tuple(f"./simple-examples/data/ptb.char.{s}.txt" for s in ("train", "valid", "test")),
            ),
        ),  # fmt: skip
        expects=("ptb.char.train.txt", "ptb.char.valid.txt", "ptb.char.test.txt"),
    ),
}


def digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, md5: str | None = None, sha256: str | None = None, size: int | None = None) -> bool:
    """Raise DataError if the file does not match; False when there was nothing to check against."""
    if not path.is_file():
        raise DataError(f"{path}: missing")
    if size is not None and path.stat().st_size != size:
        raise DataError(f"{path}: size {path.stat().st_size} bytes, expected {size}")
    for algorithm, want in (("md5", md5), ("sha256", sha256)):
        if want is not None and digest(path, algorithm) != want:
            raise DataError(f"{path}: {algorithm} {digest(path, algorithm)} does not match the published {want}")
    return any(x is not None for x in (md5, sha256, size))


def _extract(archive: Path, members: tuple[str, ...], folder: Path) -> None:
    """Take the named members out of a zip or tar archive, flat into folder (no other paths written)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for member in members:
                with z.open(member) as src, open(folder / Path(member).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as t:
        for member in members:
            src = t.extractfile(member)
            if src is None:
                raise DataError(f"{archive}: has no file {member}")
            with open(folder / Path(member).name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def fetch(name: str, folder: str | Path, log=print) -> list[str]:
    """Download (unless present), verify and unpack a dataset into folder; returns unverified file names."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    dataset, folder = DATASETS[name], Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    unverified = []
    for remote in dataset.files:
        target = folder / remote.name
        if not target.exists():
            partial = target.with_name(target.name + ".partial")
            log(f"downloading {remote.url}")
            try:
                with urllib.request.urlopen(remote.url, timeout=60) as response, open(partial, "wb") as out:
                    shutil.copyfileobj(response, out)
            except OSError as error:
                partial.unlink(missing_ok=True)
                raise DataError(f"cannot download {remote.url} ({error}); copy {remote.name} into {folder} by hand, then rerun") from None
            os.replace(partial, target)
        if not verify(target, remote.md5, remote.sha256, remote.size):
            unverified.append(remote.name)
        if remote.extract:
            _extract(target, remote.extract, folder)
    for extracted, checksum in dataset.after.items():
        algorithm, value = checksum.split(":")
        verify(folder / extracted, **{algorithm: value})
    return unverified


def check(name: str, folder: str | Path) -> list[str]:
    """Verify files already in folder (copied by hand); returns the names with no checksum to check."""
    dataset, folder = DATASETS[name], Path(folder).expanduser()
    unverified = []
    for remote in dataset.files:
        if (folder / remote.name).exists() and not verify(folder / remote.name, remote.md5, remote.sha256, remote.size):
            unverified.append(remote.name)
    for expected in dataset.expects:
        if not (folder / expected).exists() and not (folder / expected.removesuffix(".gz")).exists():
            raise DataError(f"{folder / expected}: missing")
    for extracted, checksum in dataset.after.items():
        algorithm, value = checksum.split(":")
        verify(folder / extracted, **{algorithm: value})
    return unverified
