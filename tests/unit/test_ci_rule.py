"""The suite's own CI rule: under CI=true a skipped PostgreSQL test fails the run."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parents[1] / "conftest.py").read_text()
SKIPPING = """
import pytest

@pytest.mark.postgres
def test_on_postgres():
    pytest.skip("no server")

def test_elsewhere():
    pass
"""


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "two-workers"])
@pytest.mark.parametrize(("ci", "outcome"), [("true", 1), ("", 0)])
def test_a_skipped_postgres_test_fails_only_under_ci(pytester, monkeypatch, ci, outcome,
                                                     workers):
    """Also on xdist's workers, as the suite runs (pyproject.toml's addopts): the skip is
    reported to the controller, which ends the session."""
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    postgres: needs PostgreSQL\n")
    pytester.makepyfile(SKIPPING)
    result = pytester.runpytest_subprocess(*workers)
    assert result.ret == outcome
    if outcome:
        result.stdout.fnmatch_lines(["*CI: 1 PostgreSQL test(s) skipped*"])
