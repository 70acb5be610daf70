"""The repository stands alone: what it cites is inside it, and its code keeps one format."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = re.compile(r"\.\./shared|shared/research|\bshared/DESIGN|\bDESIGN\b")


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if line and (ROOT / line).is_file()]


def test_nothing_cites_paths_outside_the_repository():
    offenders = []
    for path in _tracked():
        if path.suffix not in (".py", ".md", ".yaml", ".sh", ".toml", ".txt", ".cfg") and path.name != "run":
            continue
        if path == Path(__file__).resolve():
            continue  # the pattern itself
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not offenders, "\n".join(offenders)


def test_docs_cited_by_the_code_exist():
    cited = set()
    for path in _tracked():
        if path.suffix in (".py", ".md", ".yaml", ".sh"):
            cited |= set(re.findall(r"docs/[a-z_]+\.md", path.read_text(errors="replace")))
    assert cited, "the code should cite its design documents"
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, missing


def test_code_is_formatted_and_linted():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    formatted = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert formatted.returncode == 0, "run `ruff format .`:\n" + formatted.stdout[-3000:]
    linted = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert linted.returncode == 0, "run `ruff check --fix .`:\n" + linted.stdout[-3000:]
