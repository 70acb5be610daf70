"""The harness: Hydra composes a sweep, an executor (local, Ray Tune, Slurm) runs its cells,
the driver records every cell in MLflow, and `harness.report` turns the runs into tables and plots.

    python -m harness.sweep copy_lengths
"""
