"""Process records: a PID is only trusted with its start time, and teardown deletes only lab files."""

from __future__ import annotations

import dataclasses
import signal
import sys
from pathlib import Path

from flannel.lab import procs
from flannel.lab.spec import LabSpec
from flannel.lab.state import LabState
from flannel.lab.teardown import remove_files

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_spawned_process_is_alive_until_stopped_and_reports_its_exit_code(
    tmp_path: Path,
) -> None:
    record = procs.spawn("sleeper", SLEEPER, netns=None, log=tmp_path / "sleeper.log")
    try:
        assert procs.alive(record)
    finally:
        code = procs.stop(record)
    assert code == -signal.SIGTERM
    assert not procs.alive(record)


def test_a_record_whose_start_time_differs_is_never_signalled(tmp_path: Path) -> None:
    record = procs.spawn("sleeper", SLEEPER, netns=None, log=tmp_path / "sleeper.log")
    try:
        impostor = dataclasses.replace(record, start_time=record.start_time + 1)
        assert not procs.alive(impostor)
        procs.stop(dataclasses.replace(impostor, pid=record.pid + 0), timeout=0.1)
        assert procs.alive(record)
    finally:
        procs.stop(record)


def test_records_survive_the_state_file(tmp_path: Path) -> None:
    state = LabState(spec=LabSpec(state_dir=tmp_path / "lab"))
    state.processes["etcd"] = procs.ProcRecord("etcd", 4242, 99, "/x/etcd.log")
    state.namespaces.append("pfl-fabric")
    state.save()
    loaded = LabState.load(tmp_path / "lab")
    assert loaded.processes == state.processes
    assert loaded.namespaces == ["pfl-fabric"]


def test_removing_lab_files_keeps_anything_the_lab_did_not_create(tmp_path: Path) -> None:
    state_dir = tmp_path / "lab"
    (state_dir / "nodes" / "node1").mkdir(parents=True)
    (state_dir / "lab.json").write_text("{}")
    (state_dir / "notes.txt").write_text("mine")
    remove_files(state_dir)
    assert sorted(p.name for p in state_dir.iterdir()) == ["notes.txt"]
    (state_dir / "notes.txt").unlink()
    remove_files(state_dir)
    assert not state_dir.exists()
