"""DaemonDeps for running the real daemon without root against an in-process kernel.

Wiring tests in several folders (unit: memory store; etcd: a real etcd) run ``run_daemon`` with a
given subnet manager, a fixed external interface, no masquerade/forward rules and a
RecordingKernel (or a subclass). This builds those deps once. It lives at the top of tests/ so
every folder can import it by bare name (tests/conftest.py puts tests/ on sys.path).
"""

from __future__ import annotations

from flannel.daemon.main import DaemonDeps
from flannel.dataplane.fake import RecordingKernel
from flannel.model.iface import ExternalInterface
from flannel.subnet.base import SubnetManager


def recording_deps(
    manager: SubnetManager, kernel: RecordingKernel, ext: ExternalInterface
) -> DaemonDeps:
    """Deps that hand the daemon ``manager``, select ``ext``, start no rules, use ``kernel``."""

    async def create(*_: object) -> SubnetManager:
        return manager

    async def select(*_: object) -> ExternalInterface:
        return ext

    async def no_rules(*_: object) -> None:
        return None

    return DaemonDeps(
        create_manager=create,
        select_interface=select,
        start_traffic=no_rules,
        check_br_netfilter=False,
        kernel=lambda: kernel,
    )
