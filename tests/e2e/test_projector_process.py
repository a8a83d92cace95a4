"""`pit up`'s projector runs in a process of its own (streams/projector.py): killed, `pit up`
starts another and the views catch up with nothing lost; `pit up` stopped, it is drained
first; `pit up` killed, it goes too; unable to start, it is one clear error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streams.campaigns.drain import Pit
from streams.config import Settings
from streams.errors import PitError
from streams.projector import ProjectorProcess
from streams.waiting import until

pytestmark = pytest.mark.slow

SENTIMENT = "python:streams.pool.examples:sentiment"


def children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in found]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status").read_text()
    return "State:\tZ" not in status  # a zombie has exited; its parent has not reaped it yet


def models(pit: Pit) -> str:
    return json.dumps(pit.get("/models"))


async def register(pit: Pit, model_id: str) -> None:
    async with pit.client() as client:
        assert (await client.pool.register_model(model_id, SENTIMENT, 50, 5)).accepted


async def test_a_killed_projector_is_replaced_and_a_ctrl_c_stops_pit_up_then_it(tmp_path):
    """Killed, the projector is replaced and its views catch up. A terminal's Ctrl-C signals
    the whole foreground process group: the projector, in a session of its own, must not take
    it and leave before `pit up` has drained it."""
    pit = Pit(tmp_path / "pit")
    pit.data_dir.mkdir()
    pit.env["PIT_GROUP_SESSION_TIMEOUT_MS"] = "3000"  # the dead member's partitions move soon
    log = pit.data_dir / "pit-up-terminal.log"
    with log.open("w") as stderr:
        up = pit.up = subprocess.Popen([sys.executable, "-m", "streams.cli", "up"],
                                       env=pit.env, stdout=subprocess.DEVNULL, stderr=stderr,
                                       start_new_session=True)  # as a shell starts a job
    try:
        await until(lambda: answers(pit) and children(up.pid), 120, "pit up and its projector")
        (projector,) = children(up.pid)
        await register(pit, "m-before")
        await until(lambda: "m-before" in models(pit), 30, "the view of the first model")

        os.kill(projector, signal.SIGKILL)
        killed = projector

        def replaced() -> int | None:
            """The new projector once it has left pit up's process group: a child is listed
            from its fork, and calls setsid just after (a CI run caught it in between)."""
            found = children(up.pid)
            if found in ([], [killed]):
                return None
            try:
                return found[0] if os.getsid(found[0]) == found[0] else None
            except ProcessLookupError:
                return None
        projector = await until(replaced, 30, "pit up to start another projector, in a"
                                " session of its own")
        assert os.getpgid(projector) != os.getpgid(up.pid)  # the terminal's signal misses it
        await register(pit, "m-after")
        await until(lambda: "m-after" in models(pit), 60, "the new projector's view")
        assert "m-before" in models(pit)
        verified = pit.get("/audit/verify")
        assert verified["ok"], verified
        await register(pit, "m-last")
    finally:
        os.killpg(up.pid, signal.SIGINT)
        await pit.ended()
    assert up.returncode == 0
    assert not alive(projector)
    assert log.read_text().count("the projector process exited unasked") == 1  # the kill
    audit = subprocess.run([sys.executable, "-m", "streams.cli", "audit", "m-last"],
                           env=pit.env, capture_output=True, text=True, timeout=60)
    assert "ModelRegistered" in audit.stdout, audit  # drained before pit up stopped


async def test_a_projector_goes_when_its_pit_up_is_killed(tmp_path):
    pit = Pit(tmp_path / "pit")
    pit.data_dir.mkdir()
    await pit.start()
    assert pit.up is not None
    (projector,) = children(pit.up.pid)
    pit.signal(signal.SIGKILL)
    await pit.ended()
    await until(lambda: not alive(projector), 10, "the projector to exit")


async def test_a_projector_that_cannot_start_is_one_clear_error(tmp_path, capfd):
    unreachable = Settings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:9",
                           database_url="postgresql+psycopg://postgres@127.0.0.1:9/test")
    child = ProjectorProcess(unreachable)
    with pytest.raises(PitError, match=r"exited during start-up \(code 1\); its error is above"):
        await child.start()
    assert child.process is not None and child.process.returncode == 1
    said = capfd.readouterr().err.strip().splitlines()
    assert said[-1].startswith("pit: error: ") and "database" in said[-1]
    assert "Traceback" not in "\n".join(said)


def answers(pit: Pit) -> bool:
    try:
        pit.get("/executions")
        return True
    except OSError:
        return False
