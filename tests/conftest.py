"""Suite-wide rules. Fixtures live beside the tests that use them."""

from __future__ import annotations

import os

import pytest

_skipped_postgres: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "postgres" in report.keywords:
        _skipped_postgres.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a skipped PostgreSQL test fails the run: the same projection and audit
    suite must have run on both databases."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and _skipped_postgres:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"CI: {len(_skipped_postgres)} PostgreSQL test(s) skipped, which CI forbids: "
                f"{_skipped_postgres[0]} ...", red=True)
