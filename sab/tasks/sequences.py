"""Classification of a sequence at its last step: pixel / permuted MNIST, sequential CIFAR-10,
and the data that runs here without a download (scikit-learn's digits, MNIST-1D).

    pixel_mnist      784 steps, 1 channel (IDX files in data_dir)    permuted_mnist: fixed permutation
    cifar10          1024 steps, 3 channels (python batches in data_dir)
    pixel_digits     64 steps, 1 channel (scikit-learn's bundled 8x8 digits)    permuted_digits
    mnist1d          40 steps, 1 channel (generated offline by the mnist1d package)

Loss: cross-entropy at the last step. Metric: accuracy. The validation set is held out of the
training split; the test set is the dataset's test split.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sab.data.readers import DataError, find, read_cifar_batch, read_idx
from sab.tasks.base import Batch, Task, cross_entropy

VALIDATION_FRACTION = 0.1


class SequenceClassification(Task):
    """Sequences (N, L, C) with one class each, drawn at random for training."""

    def __init__(
        self, name: str, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], classes: int, permutation_seed: int | None = None
    ) -> None:
        self.name, self.output_size = name, classes
        inputs, labels = train
        held = max(1, int(len(labels) * VALIDATION_FRACTION))
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        self._train = (inputs[order[held:]], labels[order[held:]])
        self._val = (inputs[order[:held]], labels[order[:held]])
        self._test = test
        self.input_size = inputs.shape[2]
        self._length = inputs.shape[1]
        self.permutation = None
        if permutation_seed is not None:  # one fixed permutation of the steps, the same for every split
            self.permutation = torch.randperm(self._length, generator=torch.Generator().manual_seed(permutation_seed))

    @property
    def length(self) -> int:
        return self._length

    @property
    def positions(self) -> Tensor:
        return torch.tensor([self._length - 1])

    def _batch(self, inputs: Tensor, labels: Tensor) -> Batch:
        if self.permutation is not None:
            inputs = inputs[:, self.permutation]
        return Batch(inputs.float(), labels.unsqueeze(1), self.positions)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        inputs, labels = self._train
        index = torch.randint(0, len(labels), (batch_size,), generator=generator)
        return self._batch(inputs[index], labels[index])

    def evaluation(self, split: str, batch_size: int, n_batches: int, seed: int) -> list[Batch]:
        inputs, labels = self._val if split == "val" else self._test
        count = min(len(labels), batch_size * n_batches)
        return [self._batch(inputs[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, count, batch_size)]

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(logits, targets)

    def metrics(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        return {"accuracy": (logits.argmax(-1) == targets).float().mean().item(), "loss": self.loss(logits, targets).mean().item()}


def _pixels(images: Tensor, scale: float) -> Tensor:
    """(N, H, W) -> (N, H*W, 1) in [0, 1], one pixel per step in raster order."""
    return images.reshape(images.shape[0], -1, 1).float() / scale


def mnist(data_dir: str | None, permutation_seed: int | None) -> SequenceClassification:
    """Pixel MNIST from the standard IDX files (train-images-idx3-ubyte[.gz], ... t10k-...)."""
    what = "MNIST IDX files (train-/t10k- images-idx3-ubyte and labels-idx1-ubyte, optionally .gz)"
    split = {}
    for prefix in ("train", "t10k"):
        images = read_idx(find(data_dir, (f"{prefix}-images-idx3-ubyte",), what, "mnist"))
        labels = read_idx(find(data_dir, (f"{prefix}-labels-idx1-ubyte",), what, "mnist"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{data_dir}: {prefix} images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match; expected (N, 28, 28) and (N,)"
            )
        split[prefix] = (_pixels(images, 255.0), labels.long())
    name = "permuted_mnist" if permutation_seed is not None else "pixel_mnist"
    return SequenceClassification(name, split["train"], split["t10k"], 10, permutation_seed)


def cifar10(data_dir: str | None, permutation_seed: int | None = None) -> SequenceClassification:
    """Sequential CIFAR-10 from the python batches: 1024 steps of (R, G, B)."""
    what = "CIFAR-10 python batches (data_batch_1..5, test_batch from cifar-10-python.tar.gz)"
    parts = [read_cifar_batch(find(data_dir, (f"data_batch_{i}",), what, "cifar10")) for i in range(1, 6)]
    test = read_cifar_batch(find(data_dir, ("test_batch",), what, "cifar10"))

    def as_sequence(images: Tensor) -> Tensor:
        return images.view(-1, 3, 1024).transpose(1, 2).float() / 255.0  # planes R, G, B -> (N, 1024, 3)

    train = (as_sequence(torch.cat([p[0] for p in parts])), torch.cat([p[1] for p in parts]))
    return SequenceClassification("cifar10", train, (as_sequence(test[0]), test[1]), 10)


def digits(data_dir: str | None, permutation_seed: int | None) -> SequenceClassification:
    """scikit-learn's bundled 8x8 digits (1797 images) as 64-step pixel sequences: no download."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("pixel_digits needs scikit-learn (pip install scikit-learn; the harness extra has it)") from None
    data = load_digits()
    images, labels = torch.tensor(data.images), torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    test, train = order[:300], order[300:]
    pixels = _pixels(images, 16.0)
    name = "permuted_digits" if permutation_seed is not None else "pixel_digits"
    return SequenceClassification(name, (pixels[train], labels[train]), (pixels[test], labels[test]), 10, permutation_seed)


def mnist1d(data_dir: str | None, permutation_seed: int | None = None) -> SequenceClassification:
    """MNIST-1D (40-step signals, 10 classes), generated offline by the mnist1d package's templates."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError("mnist1d needs the mnist1d package (pip install mnist1d; the harness extra has it)") from None
    data = make_dataset(get_dataset_args())  # generates from built-in templates; never downloads
    train = (torch.tensor(data["x"], dtype=torch.float32).unsqueeze(2), torch.tensor(data["y"], dtype=torch.long))
    test = (torch.tensor(data["x_test"], dtype=torch.float32).unsqueeze(2), torch.tensor(data["y_test"], dtype=torch.long))
    return SequenceClassification("mnist1d", train, test, 10)


LOADERS: dict[str, tuple[Callable[..., SequenceClassification], bool]] = {
    "pixel_mnist": (mnist, False),
    "permuted_mnist": (mnist, True),
    "cifar10": (cifar10, False),
    "pixel_digits": (digits, False),
    "permuted_digits": (digits, True),
    "mnist1d": (mnist1d, False),
}
"""name -> (loader, permuted?)."""
