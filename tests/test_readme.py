"""The README starts with the two set-up-and-run commands, and CI runs the second one verbatim."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_commands():
    main, tests = _readme_commands()
    assert main.endswith("-m harness.sweep copy_lengths")
    assert tests.endswith("-m pytest")
    assert "torch==2.13.0" in main and "torch==2.13.0" in tests


def test_ci_runs_the_readme_test_command():
    ci_lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l and not l.startswith(("#", "set ", "cd "))]
    assert ci_lines == [_readme_commands()[1]]
