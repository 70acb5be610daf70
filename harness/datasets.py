"""The data a cell trained and was evaluated on, as an MLflow dataset input: the UI's Dataset
column and run page then say which task, length and files a result came from.

Generated tasks (copy, adding) are named by their generator and seeds; tasks read from files by
the sha256 of every file in their data_dir (hashed once per driver), so two results from
different copies of a dataset do not look alike."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from sab.tasks import GENERATED
from sab.train import TEST_SEED, VAL_SEED, TrialSpec


@functools.cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, cached by its path, size and modification time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _folder_digest(folder: str) -> dict[str, str]:
    files = sorted(p for p in Path(folder).iterdir() if p.is_file()) if folder and Path(folder).is_dir() else []
    return {p.name: _file_digest(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def dataset_of(spec: TrialSpec) -> dict[str, str]:
    """name, digest, source_type and source of the data of a cell (MLflow's Dataset fields)."""
    identity: dict = {"task": spec.task, "seq_len": spec.seq_len, "seeds": {"train": spec.seed, "val": VAL_SEED, "test": TEST_SEED}}
    if spec.task in GENERATED:
        source_type, source = "generated", f"sab.tasks: {spec.task} at T={spec.seq_len}, generator seeded per split"
    else:
        identity.update(permutation_seed=spec.permutation_seed, files=_folder_digest(spec.data_dir or ""))
        source_type, source = "local", str(Path(spec.data_dir).resolve()) if spec.data_dir else "(package data)"
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return {"name": f"{spec.task}@T={spec.seq_len}", "digest": digest, "source_type": source_type, "source": source}
