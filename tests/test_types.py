"""mypy as a ratchet (issue 10): the type errors may only go down, file by file, and the
kernel (`streams/*.py` at the top level, `schemas/*.py`) has none.

mypy runs once per session, as configured in pyproject.toml ([tool.mypy]). The recorded counts
are in tests/mypy_baseline.json; after fixing errors, record the lower counts with
`python tests/test_types.py` (it writes the current counts).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BASELINE = Path(__file__).with_name("mypy_baseline.json")
ERROR = re.compile(r"^(?P<path>[^:\s]+\.py):\d+(?::\d+)?: error: ")
KERNEL = re.compile(r"^(streams|schemas)/[^/]+\.py$")


def run_mypy() -> tuple[Counter[str], list[str]]:
    """Errors per file (paths relative to the repository, with /) and the error lines."""
    if importlib.util.find_spec("mypy") is None:
        pytest.fail("mypy is not installed: the type check needs the dev dependencies"
                    " (pip install -e '.[dev]')")
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    if done.returncode not in (0, 1):  # 2: mypy itself failed (configuration, crash)
        pytest.fail(f"mypy failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    lines = [line.replace("\\", "/") for line in done.stdout.splitlines()]
    errors = [line for line in lines if ERROR.match(line)]
    return Counter(ERROR.match(line)["path"] for line in errors), errors


@pytest.fixture(scope="module")
def mypy_report() -> tuple[Counter[str], list[str]]:
    return run_mypy()


def test_type_errors_do_not_grow(mypy_report) -> None:
    counts, errors = mypy_report
    baseline = json.loads(BASELINE.read_text())
    recorded: dict[str, int] = baseline["files"]
    worse = {path: (recorded.get(path, 0), n) for path, n in sorted(counts.items())
             if n > recorded.get(path, 0)}
    total = sum(counts.values())
    if worse or total > baseline["total"]:
        shown = "\n".join(line for line in errors if ERROR.match(line)["path"] in worse)
        pytest.fail(
            f"mypy: {total} errors (baseline {baseline['total']}); more than recorded in "
            + ", ".join(f"{path} ({was} -> {now})" for path, (was, now) in worse.items())
            + f"\n{shown}\nFix them: the baseline ({BASELINE.name}) may only go down.",
            pytrace=False)
    if total < baseline["total"]:
        warnings.warn(f"mypy: {total} errors, {baseline['total'] - total} fewer than the"
                      f" baseline: lower it with `python tests/test_types.py`", stacklevel=1)


def test_the_kernel_has_no_type_errors(mypy_report) -> None:
    _, errors = mypy_report
    kernel = [line for line in errors if KERNEL.match(ERROR.match(line)["path"])]
    assert not kernel, (f"{len(kernel)} mypy errors in the kernel (streams/*.py, schemas/*.py),"
                        " which must have none:\n" + "\n".join(kernel))


if __name__ == "__main__":  # record the current counts as the baseline
    found, _ = run_mypy()
    BASELINE.write_text(json.dumps({"total": sum(found.values()),
                                    "files": dict(sorted(found.items()))}, indent=2) + "\n")
    print(f"{BASELINE}: {sum(found.values())} errors in {len(found)} files")
