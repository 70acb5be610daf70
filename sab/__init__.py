"""Sparse Attentive Backtracking (Ke, Goyal et al., NeurIPS 2018) in pure PyTorch, with its baselines.

    from sab.train import TrialSpec, run_trial
    result = run_trial(TrialSpec(task="copy", method="sab", seq_len=30, steps=2000))

Needs torch only; never imports the harness, Ray, MLflow or Hydra.
"""

METHOD_VERSION = 2
"""Bumped by hand when a change to the method, its engines or its tasks would change results;
part of every harness cell id, so a bump makes the harness rerun every cell."""
