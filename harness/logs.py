"""What the harness lets libraries say: one switch (--quiet / --verbose) for MLflow, Ray, Alembic
and Python warnings, while the project's own progress lines stay on stdout."""

from __future__ import annotations

import logging
import os
import warnings

LIBRARIES = ("mlflow", "ray", "alembic", "filelock", "urllib3", "matplotlib", "submitit")
LEVELS = {"quiet": "ERROR", "default": "WARNING", "verbose": "INFO"}


def configure(verbosity: str = "default") -> None:
    """Set the libraries' loggers to `verbosity`; call before MLflow is imported (it reads
    MLFLOW_LOGGING_LEVEL once). A user's MLFLOW_LOGGING_LEVEL is kept unless a switch was given."""
    level = LEVELS[verbosity]
    if verbosity == "default":
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", level)
    else:
        os.environ["MLFLOW_LOGGING_LEVEL"] = level
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(level)
    if verbosity == "quiet":
        warnings.simplefilter("ignore")
