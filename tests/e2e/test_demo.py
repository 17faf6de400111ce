"""``make demo`` itself: the README's first command must keep working (it had no test before)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flannel.lab.demo import run_demo
from flannel.lab.plan import random_prefix

pytestmark = pytest.mark.e2e


def test_the_demo_brings_a_lab_up_proves_it_diagnoses_it_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    prefix = random_prefix()
    code = run_demo(prefix=prefix, state_dir=tmp_path / "lab", keep=False, progress=lines.append)
    out = "\n".join(lines)
    assert code == 0, out
    assert "check OK: 48/48 probes passed" in out
    assert "0 errors, 0 warnings" in out  # flannelctl doctor on a fresh lab finds nothing
    assert "3 leases" in out  # flannelctl status saw every node
    assert not [ns for ns in Path("/run/netns").glob(f"{prefix}-*")]  # torn down
