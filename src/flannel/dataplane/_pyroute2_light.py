"""Import pyroute2's IPRoute without pyroute2/__init__.py (the netlink adapter's helper).

pyroute2's package ``__init__`` eagerly imports every subsystem it has (NDB, IPDB, conntrack, ipset,
nl80211, ...): ~3 MiB of resident memory flanneld never uses, in a daemon whose whole budget is the
50 MiB DaemonSet request. Registering a bare package object first lets ``pyroute2.iproute.linux``
load only what it needs. If pyroute2 is already imported (a test imported it), nothing changes.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def load_light() -> None:
    """Register an empty ``pyroute2`` package shell whose submodules import normally."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        return  # let the real import fail with pyroute2's own message
    shell = types.ModuleType("pyroute2")
    shell.__path__ = list(spec.submodule_search_locations)
    shell.__file__ = spec.origin
    shell.__spec__ = spec
    sys.modules["pyroute2"] = shell
