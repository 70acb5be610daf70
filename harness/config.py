"""Sweep files as data: compose `sweeps/NAME.yaml` with Hydra, apply the budget, validate.

    cfg = load_sweep("copy_lengths", ["budget=smoke", "seq_len=[20,30]"])

Override rule: `key=value` on a top-level key of the file (budget, grid.*, fixed.*, ...) is
Hydra's own; a bare parameter name is short for `grid.NAME` when the sweep has that grid axis,
else for `fixed.NAME`. Precedence: the user's overrides > the chosen budget > the file.
Every user-caused error is a `SweepError` with one line: what was wrong, the value, what is allowed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sab.methods import METHOD_NAMES
from sab.train import TrialSpec

DEFAULT_BUDGET = "quick"
TOP_LEVEL_KEYS = (
    "name",
    "description",
    "budget",
    "fixed",
    "grid",
    "union",
    "exclude",
    "budgets",
    "resources",
    "paper",
    "slurm",
    "metric",
    "notes",
    "lr_source",
    "per_method",
)
LOWER_IS_BETTER = ("bpc", "loss", "mse")
SPEC_FIELDS = tuple(f.name for f in fields(TrialSpec))
SLURM_KEYS = (
    "partition",
    "account",
    "qos",
    "gpus_per_node",
    "cpus_per_task",
    "mem_gb",
    "constraint",
    "timeout_min",
    "array_parallelism",
    "additional",
)


class SweepError(ValueError):
    """A bad sweep, override or resource request; its message is the one line a user sees."""


def sweeps_dir() -> Path:
    """The sweep files: $SAB_SWEEPS_DIR, else `sweeps/` beside the `harness` package."""
    return Path(os.environ.get("SAB_SWEEPS_DIR") or Path(__file__).resolve().parent.parent / "sweeps")


def list_sweeps(directory: Path | None = None) -> list[str]:
    """Names of the sweep files, sorted."""
    return sorted(p.stem for p in (directory or sweeps_dir()).glob("*.yaml"))


@dataclass(frozen=True)
class Resources:
    """What one trial asks of the executor."""

    cpus_per_trial: int = 1  # also the trial's torch threads
    gpus_per_trial: float = 0.0  # fractional values pack trials onto a GPU
    mem_gb: float | None = 8.0  # per-trial memory limit (address space); None: no limit
    max_concurrent: int | None = None  # cap on trials at once (None: as resources allow)


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep with its budget applied."""

    name: str
    budget: str
    description: str
    fixed: dict[str, Any]
    grid: dict[str, list]
    union: list[dict[str, list]]
    exclude: list[dict[str, Any]]
    resources: Resources
    paper: list[dict] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)
    metric: str = "accuracy"  # the report's main metric (bpc, loss and mse: lower is better)
    notes: str = ""  # shown verbatim in the report
    lr_source: dict[str, str] = field(default_factory=dict)  # method -> where its lr came from (the report shows it)
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> fixed values of that method's cells
    budgets: tuple[str, ...] = ()
    path: str = ""


def _read_yaml(path: Path) -> dict:
    """Parse the file ourselves first, so a syntax error names the file and line."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SweepError(f"{where}: YAML syntax error: {problem}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: a sweep file must be a mapping of keys, got {type(data).__name__}")
    return data


def _check_safe(node: Any, path: Path, where: str = "") -> None:
    """No `_target_` (no code named by a sweep file) and no resolver interpolations such as ${oc.env:...}."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                raise SweepError(f"{path}: '_target_' at {where or 'top level'} is not allowed; sweep files are data, not code")
            _check_safe(value, path, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_safe(value, path, f"{where}[{i}]")
    elif isinstance(node, str) and re.search(r"\$\{[^}]*:", node):
        raise SweepError(f"{path}: resolver interpolation {node!r} at {where} is not allowed (no environment lookups in sweep files)")


def _expand_overrides(overrides: list[str], raw: dict) -> tuple[list[str], set[str]]:
    """Map short forms to grid./fixed. keys; return Hydra overrides and the keys the user set."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise SweepError(f"bad override in {overrides}: {str(error).splitlines()[0]}") from None
    grid_axes = set((raw.get("grid") or {}).keys())
    hydra_overrides, user_keys = [], set()
    for text, override in zip(overrides, parsed):
        key = override.key_or_group
        head = key.split(".")[0]
        if head in TOP_LEVEL_KEYS:
            if not text.startswith(("+", "~")) and not _has_key(raw, key):
                text = "++" + text  # add the key when the file does not have it yet
            hydra_overrides.append(text)
            user_keys.add(key)
            continue
        if key not in SPEC_FIELDS:
            raise SweepError(
                f"unknown parameter {key!r} in override {text!r}; valid: {', '.join(SPEC_FIELDS)} (or budget=, grid.*, fixed.*)"
            )
        target = f"grid.{key}" if key in grid_axes else f"fixed.{key}"
        value = text.split("=", 1)[1] if "=" in text else ""
        hydra_overrides.append(f"++{target}={value}")
        user_keys.add(target)
    return hydra_overrides, user_keys


def _has_key(data: dict, dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _compose(name: str, directory: Path, overrides: list[str]) -> dict:
    """Hydra's compose API over the sweep folder; returns a plain, resolved dict."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(directory.resolve()), job_name="sab_bench"):
            cfg = compose(config_name=name, overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as error:
        raise SweepError(f"sweep {name!r}: {str(error).splitlines()[0]}") from None
    finally:
        GlobalHydra.instance().clear()


def load_sweep(name: str, overrides: list[str] | None = None, directory: Path | None = None) -> SweepConfig:
    """Compose, apply the budget and validate a sweep; raises SweepError before any work."""
    directory = directory or sweeps_dir()
    available = list_sweeps(directory)
    if name not in available:
        raise SweepError(f"unknown sweep {name!r}; valid: {', '.join(available) or '(none in ' + str(directory) + ')'}")
    path = directory / f"{name}.yaml"
    raw = _read_yaml(path)
    _check_safe(raw, path)
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown top-level key {unknown[0]!r}; valid: {', '.join(TOP_LEVEL_KEYS)}")
    _check_shapes(raw, path)
    hydra_overrides, user_keys = _expand_overrides(list(overrides or []), raw)
    data = _compose(name, directory, hydra_overrides)
    _check_shapes(data, path)
    return _validate(name, path, _apply_budget(data, user_keys, path))


SECTION_SHAPES = {
    "name": (str,), "description": (str,), "budget": (str,), "metric": (str,), "notes": (str,),
    "fixed": (dict,), "grid": (dict,), "budgets": (dict,), "resources": (dict,), "slurm": (dict,), "lr_source": (dict,), "per_method": (dict,),
    "union": (list,), "exclude": (list,), "paper": (list,),
}  # fmt: skip
"""What each top-level section of a sweep file must be (None, an empty section, is allowed)."""


def _check_shapes(data: dict, path: Path) -> None:
    """A section of the wrong kind (`grid: 5`, `fixed: [1, 2]`) is one clear line, not a traceback."""
    for key, kinds in SECTION_SHAPES.items():
        value = data.get(key)
        if value is not None and not isinstance(value, kinds):
            kind = "a mapping (key: value)" if kinds == (dict,) else ("a list" if kinds == (list,) else "a string")
            raise SweepError(f"{path}: {key!r} must be {kind}, got {value!r}")
    for budget, value in (data.get("budgets") or {}).items():
        if value is not None and not isinstance(value, dict):
            raise SweepError(f"{path}: budget {budget!r} must be a mapping of settings, got {value!r}")


def _apply_budget(data: dict, user_keys: set[str], path: Path) -> dict:
    """Lay the chosen budget over fixed and grid, leaving alone what the user set."""
    budgets = data.get("budgets") or {}
    budget = data.get("budget") or DEFAULT_BUDGET
    if budget not in budgets:
        raise SweepError(f"unknown budget {budget!r} for sweep {path.stem!r}; valid: {', '.join(budgets) or '(none defined)'}")
    fixed = dict(data.get("fixed") or {})
    grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in (data.get("grid") or {}).items()}
    union, exclude, lr_source, per_method = data.get("union"), data.get("exclude"), data.get("lr_source"), data.get("per_method")
    for key, value in (budgets[budget] or {}).items():
        if key == "lr_source":
            lr_source = value
        elif key == "per_method":
            per_method = value
        elif key == "resources":  # a budget's resources lay over the file's, key by key
            if not isinstance(value, dict):
                raise SweepError(f"{path}: budgets.{budget}.resources must be a mapping, got {value!r}")
            mine = {k: v for k, v in value.items() if f"resources.{k}" not in user_keys}
            data = dict(data, resources={**(data.get("resources") or {}), **mine})
        elif key == "union":
            union = value
        elif key == "exclude":
            exclude = value
        elif key == "grid":
            for axis, values in (value or {}).items():
                if f"grid.{axis}" not in user_keys:
                    grid[axis] = list(values) if isinstance(values, (list, tuple)) else [values]
                    fixed.pop(axis, None)
        elif f"fixed.{key}" not in user_keys and f"grid.{key}" not in user_keys:
            if key in grid:
                grid[key] = list(value) if isinstance(value, (list, tuple)) else [value]
            else:
                fixed[key] = value
    for axis in grid:
        fixed.pop(axis, None)  # a grid axis overrides a fixed value of the same name
    if isinstance(per_method, dict):  # a value the user set on the command line is every method's
        per_method = {m: {k: v for k, v in (values or {}).items() if f"fixed.{k}" not in user_keys} if isinstance(values, dict) else values
                      for m, values in per_method.items()}  # fmt: skip
    return dict(data, budget=budget, fixed=fixed, grid=grid, union=union, exclude=exclude, lr_source=lr_source, per_method=per_method)


def _validate(name: str, path: Path, data: dict) -> SweepConfig:
    """Check every key against TrialSpec and the resources against what is allowed."""
    for section in ("fixed", "grid"):
        for key in data[section]:
            if key not in SPEC_FIELDS:
                what = "grid axis" if section == "grid" else "fixed parameter"
                raise SweepError(f"{path}: {what} {key!r} is not a parameter; valid: {', '.join(SPEC_FIELDS)}")
    for axis, values in data["grid"].items():
        if not values:
            raise SweepError(f"{path}: grid axis {axis!r} has no values")
    union = [_as_grid(u, path, "union") for u in data.get("union") or []]
    exclude = list(data.get("exclude") or [])
    for rule in exclude:
        bad = [k for k in rule if k not in SPEC_FIELDS]
        if bad:
            raise SweepError(f"{path}: exclude key {bad[0]!r} is not a parameter; valid: {', '.join(SPEC_FIELDS)}")
    resources = _resources(data.get("resources") or {}, path)
    lr_source = data.get("lr_source") or {}
    if not isinstance(lr_source, dict) or not all(isinstance(v, str) for v in lr_source.values()):
        raise SweepError(f"{path}: lr_source must map a method to a sentence saying where its lr came from, got {lr_source!r}")
    per_method = _per_method(data.get("per_method") or {}, path)
    slurm = dict(data.get("slurm") or {})
    bad_slurm = [k for k in slurm if k not in SLURM_KEYS]
    if bad_slurm:
        raise SweepError(f"{path}: slurm key {bad_slurm[0]!r} is not allowed; valid: {', '.join(SLURM_KEYS)}")
    return SweepConfig(
        name=data.get("name") or name,
        budget=data["budget"],
        description=str(data.get("description") or "").strip(),
        fixed=data["fixed"],
        grid=data["grid"],
        union=union,
        exclude=exclude,
        resources=resources,
        paper=list(data.get("paper") or []),
        slurm=slurm,
        budgets=tuple(data.get("budgets") or ()),
        path=str(path),
        metric=str(data.get("metric") or "accuracy"),
        notes=str(data.get("notes") or "").strip(),
        lr_source={str(k): v for k, v in lr_source.items()},
        per_method=per_method,
    )


def _per_method(raw: dict, path: Path) -> dict[str, dict[str, Any]]:
    """`per_method: {METHOD: {param: value}}`: fixed values of one method's cells (its lr chosen on
    validation, say), over `fixed` and under the grid's axes; one line for a bad method or key."""
    for method, values in raw.items():
        if method not in METHOD_NAMES:
            raise SweepError(f"{path}: per_method names unknown method {method!r}; valid: {', '.join(METHOD_NAMES)}")
        if not isinstance(values, dict):
            raise SweepError(f"{path}: per_method.{method} must be a mapping of parameter: value, got {values!r}")
        bad = [k for k in values if k not in SPEC_FIELDS or k == "method"]
        if bad:
            raise SweepError(f"{path}: per_method.{method} key {bad[0]!r} is not a parameter; valid: {', '.join(SPEC_FIELDS)}")
    return {str(m): dict(v) for m, v in raw.items()}


def _as_grid(entry: Any, path: Path, where: str) -> dict[str, list]:
    if not isinstance(entry, dict):
        raise SweepError(f"{path}: each {where} entry must be a mapping of axis: [values], got {entry!r}")
    grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in entry.items()}
    bad = [k for k in grid if k not in SPEC_FIELDS]
    if bad:
        raise SweepError(f"{path}: {where} axis {bad[0]!r} is not a parameter; valid: {', '.join(SPEC_FIELDS)}")
    return grid


def _resources(raw: dict, path: Path) -> Resources:
    allowed = tuple(f.name for f in fields(Resources))
    bad = [k for k in raw if k not in allowed]
    if bad:
        raise SweepError(f"{path}: resources key {bad[0]!r} is not allowed; valid: {', '.join(allowed)}")
    resources = Resources(**raw)
    if not isinstance(resources.cpus_per_trial, int) or resources.cpus_per_trial < 1:
        raise SweepError(f"resources.cpus_per_trial must be an integer >= 1, got {resources.cpus_per_trial!r}")
    if resources.gpus_per_trial < 0:
        raise SweepError(f"resources.gpus_per_trial must be >= 0, got {resources.gpus_per_trial!r}")
    if resources.mem_gb is not None and resources.mem_gb <= 0:
        raise SweepError(f"resources.mem_gb must be > 0 or null, got {resources.mem_gb!r}")
    return resources
