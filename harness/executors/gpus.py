"""GPU requests checked against what is really there, before anything runs."""

from __future__ import annotations

from harness.config import SweepError


def local_gpu_count() -> int:
    """CUDA devices visible to this process (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def require_local_gpus(per_trial: float) -> None:
    """Refuse a GPU request this machine cannot meet, in one line."""
    available = local_gpu_count()
    if per_trial > available:
        raise SweepError(
            f"resources.gpus_per_trial={per_trial} but this machine has {available} CUDA GPU(s); set gpus_per_trial: 0 or run where GPUs are"
        )
    if 0 < per_trial < 1 and int(1 / per_trial) < 1 / per_trial - 1e-9:
        raise SweepError(f"resources.gpus_per_trial={per_trial} does not pack evenly onto a GPU; use 1/n (0.5, 0.25, ...)")
