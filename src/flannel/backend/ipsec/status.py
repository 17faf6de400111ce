"""``flannelctl status`` for the ipsec backend: this node's per-peer SA state from its charon.

It asks the charon flanneld runs here — VICI socket in ``$FLANNEL_IPSEC_RUN_DIR`` (default /run,
as flanneld) — and shows nothing when there is no such socket (not an ipsec node).
"""

from __future__ import annotations

import os
from pathlib import Path

from flannel.backend.ipsec.backend import RUN_DIR_ENV
from flannel.dataplane.ipsecconn import SaStatus
from flannel.dataplane.ipsecvici import ViciAdapter


def read_local(env: dict[str, str] | None = None) -> list[SaStatus]:
    """The SA status of every connection charon has here ([] without a charon socket).
    Raises KernelError when the socket exists but charon does not answer."""
    run_dir = Path((env if env is not None else dict(os.environ)).get(RUN_DIR_ENV) or "/run")
    socket_path = run_dir / "charon.vici"
    if not socket_path.exists():
        return []
    adapter = ViciAdapter(
        socket_path=socket_path, pid_path=run_dir / "charon.pid", psk="", own_ip=""
    )
    status = adapter.sa_status()
    return [
        status.get(name) or SaStatus(name, "", "", 0, 0, 0, 0, None, None)
        for name in sorted(adapter.connection_names())
    ]


def render(rows: list[SaStatus]) -> str:
    """A table: connection, established, IKE/CHILD state, bytes in/out, seconds to rekey."""
    lines = ["IPSEC PEER CONNECTION                                       ESTABLISHED  IKE          "
             "CHILD      BYTES IN    BYTES OUT   REKEY IN"]  # fmt: skip
    for r in rows:
        rekey = f"{r.rekey_in_s}s" if r.rekey_in_s is not None else "-"
        lines.append(
            f"{r.name:<60}{'yes' if r.established else 'no':<13}{r.ike_state or '-':<13}"
            f"{r.child_state or '-':<11}{r.bytes_in:<12}{r.bytes_out:<12}{rekey}"
        )
    return "\n".join(lines)
