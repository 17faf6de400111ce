"""Shared e2e fixtures: labs with unique prefixes that are always torn down.

``lab_factory(**spec_fields)`` builds a lab (``Lab.up``) with a fresh ``pfl`` + 3 random characters
prefix and a state dir under the test's tmp dir; every lab it made is torn down after the test,
pass or fail. When a test fails, each node's flanneld log tail is attached to the report first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flannel.lab.cluster import Lab, LabSpec
from flannel.lab.plan import random_prefix

LabFactory = Callable[..., Lab]


@pytest.fixture
def lab_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LabFactory]:
    """A function building labs (keyword args are LabSpec fields); all are downed afterwards."""
    labs: list[Lab] = []

    def make(**fields: Any) -> Lab:
        prefix = fields.pop("prefix", None) or random_prefix()
        state_dir = fields.pop("state_dir", None) or tmp_path / f"lab-{prefix}"
        spec = LabSpec(prefix=prefix, state_dir=state_dir, **fields)
        lab = Lab.up(spec, progress=lambda msg: print(f"[{prefix}] {msg}"))
        labs.append(lab)
        return lab

    yield make
    failed = getattr(request.node, "rep_call", None)
    for lab in labs:
        if failed is not None and failed.failed:
            for node in lab.nodes:
                tail = "\n".join(lab.flanneld_log(node).splitlines()[-30:])
                print(f"--- flanneld log tail {lab.spec.prefix} {node.name} ---\n{tail}")
        lab.down()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the item so fixtures can see whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
