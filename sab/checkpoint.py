"""Resumable trials: the training state saved every N steps, and at the next step boundary after
the process is told it will be stopped (SIGTERM, or SIGUSR2: Slurm/submitit preemption).

A save is atomic (write, then rename) and read back with `weights_only=True`: model, optimizer,
data-generator state, step, elapsed time and the partial result. After a SIGUSR2 save the
signal is handed to whoever handled it before (submitit requeues the job from there); after a
SIGTERM save training goes on until the process is stopped.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import torch

HANDED_ON = (signal.SIGUSR2,)
"""Signals passed on to the previous handler once the checkpoint is on disk."""


class Checkpointer:
    """Saves and restores one trial's training state at step boundaries."""

    def __init__(self, path: str | None, every: int = 0) -> None:
        self.path, self.every = path, every
        self.pending: set[int] = set()  # signals that asked for a save, not yet honoured (TERM and USR2 may both come)
        self._previous: dict[int, Any] = {}

    @property
    def enabled(self) -> bool:
        """Whether this trial checkpoints at all."""
        return bool(self.path)

    def listen(self) -> None:
        """Ask for a save on SIGTERM and SIGUSR2 (main thread only; elsewhere signals are not ours)."""
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGUSR2):
            self._previous[sig] = signal.signal(sig, self._request)

    def restore_handlers(self) -> None:
        """Put the previous signal handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _request(self, signum: int, frame) -> None:
        self.pending.add(signum)

    def due(self, step: int) -> bool:
        """Save after this step? (every N steps, or a signal asked)."""
        return self.enabled and (bool(self.pending) or (self.every > 0 and step % self.every == 0))

    def save(self, state: dict[str, Any]) -> None:
        """Write the state atomically, then honour a pending signal."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        partial = f"{self.path}.partial"
        torch.save(state, partial)
        os.replace(partial, self.path)
        signals, self.pending = self.pending, set()
        for signum in sorted(signals & set(HANDED_ON)):
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, None)  # e.g. submitit: checkpoint() -> requeue -> exit
            elif previous in (signal.SIG_DFL, None):
                signal.signal(signum, signal.SIG_DFL)  # the default action (terminate), now that the state is safe
                os.kill(os.getpid(), signum)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none yet."""
        if not self.enabled or not os.path.exists(self.path):
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def remove(self) -> None:
        """Delete the checkpoint (the trial is over)."""
        if self.enabled and os.path.exists(self.path):
            os.remove(self.path)


def training_state(model, optimizer, generator: torch.Generator, step: int, elapsed: float, extra: dict) -> dict[str, Any]:
    """Everything a resumed trial needs, as plain data and tensors."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "step": step,
        "elapsed": elapsed,
        **extra,
    }


def restore(state: dict[str, Any], model, optimizer, generator: torch.Generator) -> None:
    """Load a saved training state into fresh objects."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
