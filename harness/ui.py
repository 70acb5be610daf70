"""Open the MLflow UI on the project's store, bound to 127.0.0.1.

    sab-ui                               # = python -m harness.ui: http://127.0.0.1:5000, store results/mlflow.db
    sab-ui --port 5055 --results-dir /path/to/results
    mlflow ui --backend-store-uri sqlite:///results/mlflow.db    # plain MLflow, the same store

Runs `mlflow server` with one worker and without MLflow's job runner (its default UI starts a
pool of job consumers of ~2 GB); reach it from elsewhere through an SSH tunnel rather than
binding another interface (`--host` exists for those who must).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from harness.tracking import default_uri


def runs_page(base_url: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow 3's model-training view: a browser new to MLflow opens
    experiments in its GenAI view (its default, kept in the browser), whatever the experiment's kind."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def command(results_dir: Path, host: str, port: int) -> list[str]:
    """The server command line for a store under results_dir."""
    results_dir = results_dir.resolve()
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    return [
        mlflow, "server", "--backend-store-uri", default_uri(results_dir),
        "--default-artifact-root", (results_dir / "mlartifacts").as_uri(),
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Replace this process with the MLflow server."""
    parser = argparse.ArgumentParser(prog="sab-ui", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default="results", help="folder holding mlflow.db (default: ./results)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    args = parser.parse_args(argv)
    results_dir = Path(args.results_dir)
    if not (results_dir / "mlflow.db").exists():
        print(
            f"error: no store at {results_dir.resolve() / 'mlflow.db'}; run a sweep first (python -m harness.sweep copy_lengths)",
            file=sys.stderr,
        )
        return 2
    argv_out = command(results_dir, args.host, args.port)
    print(f"MLflow UI on http://{args.host}:{args.port} (store {default_uri(results_dir)}); a sweep's runs: "
          f"{runs_page(f'http://{args.host}:{args.port}', 'ID')} (ID: the experiment's id)", flush=True)  # fmt: skip
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    os.execv(argv_out[0], argv_out)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
