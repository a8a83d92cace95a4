"""`pit audit <key>` folds each run of quiet records (a health check every 10 s) into one
line, so the lifecycle stays readable; `--all` shows every one (projections/audit.py)."""

from __future__ import annotations

from projections.audit import history_lines
from streams.components import COMPONENTS

T0 = 1_764_833_293_000


def row(seq: int, event_type: str, **payload) -> dict:
    return {"seq": seq, "timestamp_ms": T0 + seq * 10_000, "topic": "pit.pool.events",
            "partition": 0, "offset": seq, "event_type": event_type, "key": "m",
            "payload": payload}


def test_a_run_of_health_checks_is_one_line_with_its_outcomes_and_the_rest_stays() -> None:
    quiet = {name for c in COMPONENTS for name in c.quiet_events}
    assert {"HealthRecorded", "ReportHealth"} <= quiet
    rows = [row(1, "ModelTransitioned", to_state="Hot"),
            *(row(n, "HealthRecorded", ok=n != 5) for n in range(2, 9)),
            row(9, "ModelTransitioned", to_state="Cooling"),
            row(10, "HealthRecorded", ok=True)]
    lines = list(history_lines(rows, quiet))
    assert len(lines) == 4
    assert "ModelTransitioned" in lines[0] and "Cooling" in lines[2]
    assert lines[1] == ("#2..#8 2025-12-04T07:28:33.000Z to 2025-12-04T07:29:33.000Z:"
                        " 7 HealthRecorded (6 ok, 1 not ok) (--all shows each)")
    assert "HealthRecorded" in lines[3] and "--all" not in lines[3]  # one alone is shown
    assert len(list(history_lines(rows))) == len(rows)  # --all
