"""The tests' own helper for reading a process's output up to a line: it returns, or fails in time."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import read_until

CHATTY_THEN_SILENT = "import sys, time; print('one'); print('two'); print('three'); sys.stdout.flush(); time.sleep(120)"


def _process(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_wanted_line_is_returned_and_the_next_stays_for_the_test():
    process = _process(CHATTY_THEN_SILENT)
    try:
        assert read_until(process, lambda line: line.startswith("two"), timeout=30) == "two\n"
        assert process.stdout.readline() == "three\n"
    finally:
        process.kill()
        process.wait()


def test_a_process_that_stalls_before_the_line_fails_by_the_deadline_and_is_killed():
    process = _process(CHATTY_THEN_SILENT)
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"no wanted line within 2 s; it printed:\none\ntwo\nthree\n"):
        read_until(process, lambda line: line.startswith("never"), timeout=2, stacks=False)
    assert time.monotonic() - started < 20
    assert process.wait(timeout=10) == -9


def test_a_process_that_ends_without_the_line_fails_at_once_with_its_exit():
    process = _process("print('only this')")
    with pytest.raises(pytest.fail.Exception, match=r"its stdout ended \(exit 0\) without the wanted line; it printed:\nonly this"):
        read_until(process, lambda line: line.startswith("never"), timeout=60)
