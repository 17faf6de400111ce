"""The connectivity check: pod↔pod on the same node and across nodes, TCP, and pod→wan.

- ping: one packet, 1 s timeout, many in parallel. Every ordered pod pair while the lab has at most
  ``FULL_MATRIX_PODS`` pods; beyond that every pod pings its own node's pods and the first pod of
  three other nodes (next, next-but-one, opposite), which still crosses every node pair class.
- tcp: every pod connects to a pod on the next node; the listener must see the *pod* address as the
  source (traffic inside the cluster network must not be masqueraded).
- wan (only with --ip-masq): every pod pings the wan host and connects to it over TCP; the wan host
  must see the pod's *node* underlay address (masquerade works; the wan host has no route back to
  pods, so an unmasqueraded packet gets no answer).

TCP listeners and clients are sockets of this process created inside the namespaces (netns.socket_in),
so no helper programs run in pods.
"""

from __future__ import annotations

import concurrent.futures
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from flannel.lab import netns

FULL_MATRIX_PODS = 30
PING_WORKERS = 24
TCP_PORT = 7777
TCP_TIMEOUT = 3.0


@dataclass(frozen=True)
class Endpoint:
    """Something that takes part in the check: a pod (with its node) or the wan host."""

    name: str
    netns: str
    ip: str
    node: int = 0
    node_ip: str = ""


@dataclass(frozen=True)
class CheckRow:
    """One probe: kind (``ping`` / ``tcp`` / ``wan-ping`` / ``wan-tcp``), who, whom, result."""

    kind: str
    src: str
    dst: str
    ok: bool
    detail: str = ""


@dataclass
class CheckReport:
    """All probes of one check; ``ok`` only when every probe passed."""

    rows: list[CheckRow] = field(default_factory=list)
    pods: list[Endpoint] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every probe passed (and there was at least one)."""
        return bool(self.rows) and all(row.ok for row in self.rows)

    @property
    def failures(self) -> list[CheckRow]:
        """The probes that failed."""
        return [row for row in self.rows if not row.ok]

    def render(self) -> str:
        """A compact table (one line per pod, passed/total per probe kind) and the failures."""
        from flannel.lab.checkrender import render_report

        return render_report(self)


def plan_pings(pods: Sequence[Endpoint]) -> list[tuple[Endpoint, Endpoint]]:
    """Which (src, dst) pod pairs to ping (pure)."""
    if len(pods) <= FULL_MATRIX_PODS:
        return [(a, b) for a in pods for b in pods if a is not b]
    by_node: dict[int, list[Endpoint]] = {}
    for pod in pods:
        by_node.setdefault(pod.node, []).append(pod)
    nodes = sorted(by_node)
    pairs: list[tuple[Endpoint, Endpoint]] = []
    for pod in pods:
        pairs += [(pod, other) for other in by_node[pod.node] if other is not pod]
        position = nodes.index(pod.node)
        for step in {1, 2, len(nodes) // 2}:
            target = nodes[(position + step) % len(nodes)]
            if target != pod.node:
                pairs.append((pod, by_node[target][0]))
    return pairs


def plan_tcp(pods: Sequence[Endpoint]) -> list[tuple[Endpoint, Endpoint]]:
    """Each pod → the first pod of the next node that has pods (pure)."""
    nodes = sorted({pod.node for pod in pods})
    first = {node: next(p for p in pods if p.node == node) for node in nodes}
    if len(nodes) < 2:
        return []
    return [(pod, first[nodes[(nodes.index(pod.node) + 1) % len(nodes)]]) for pod in pods]


def run_check(pods: Sequence[Endpoint], wan: Endpoint | None) -> CheckReport:
    """Probe everything in parallel and collect the rows."""
    report = CheckReport(pods=list(pods))
    pings: list[tuple[str, Endpoint, Endpoint]] = [("ping", a, b) for a, b in plan_pings(pods)]
    if wan is not None:
        pings += [("wan-ping", pod, wan) for pod in pods]
    with concurrent.futures.ThreadPoolExecutor(PING_WORKERS) as pool:
        report.rows += pool.map(lambda job: _ping(*job), pings)
    report.rows += _tcp_round("tcp", plan_tcp(pods), expect_source="pod")
    if wan is not None:
        report.rows += _tcp_round("wan-tcp", [(pod, wan) for pod in pods], expect_source="node")
    return report


def _ping(kind: str, src: Endpoint, dst: Endpoint) -> CheckRow:
    result = netns.run(
        ["ping", "-c1", "-W1", "-q", dst.ip], netns=src.netns, check=False, timeout=10
    )
    ok = result.returncode == 0
    return CheckRow(kind, src.name, dst.name, ok, "" if ok else f"no reply from {dst.ip}")


def _tcp_round(
    kind: str, pairs: Sequence[tuple[Endpoint, Endpoint]], expect_source: str
) -> list[CheckRow]:
    listeners: dict[str, socket.socket] = {}
    try:
        for _, dst in pairs:
            if dst.netns not in listeners:
                listener = netns.socket_in(dst.netns)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((dst.ip, TCP_PORT))
                listener.listen(256)
                listeners[dst.netns] = listener
        with concurrent.futures.ThreadPoolExecutor(PING_WORKERS) as pool:
            connected = list(pool.map(lambda pair: _connect(*pair), pairs))
        seen = _accept_all(listeners, sum(1 for c in connected if c is None))
    finally:
        for listener in listeners.values():
            listener.close()
    rows = []
    for (src, dst), error in zip(pairs, connected, strict=True):
        if error is not None:
            rows.append(CheckRow(kind, src.name, dst.name, False, error))
            continue
        want = src.ip if expect_source == "pod" else src.node_ip
        got = seen.get(src.name)
        ok = got == want
        detail = "" if ok else f"{dst.name} saw source {got}, expected {want} ({expect_source})"
        rows.append(CheckRow(kind, src.name, dst.name, ok, detail))
    return rows


def _connect(src: Endpoint, dst: Endpoint) -> str | None:
    sock = netns.socket_in(src.netns)
    with sock:
        sock.settimeout(TCP_TIMEOUT)
        try:
            sock.connect((dst.ip, TCP_PORT))
            sock.sendall(src.name.encode() + b"\n")
        except OSError as exc:
            return f"connect to {dst.ip}:{TCP_PORT} failed: {exc}"
    return None


def _accept_all(listeners: dict[str, socket.socket], expected: int) -> dict[str, str]:
    """Accept every pending connection; map the client's announced name → the source address seen.

    Every client's connect() has returned by now, so its connection already waits in the accept
    queue: a non-blocking accept loop drains it without waiting on empty listeners.
    """
    seen: dict[str, str] = {}
    for listener in listeners.values():
        listener.setblocking(False)
        while len(seen) < expected:
            try:
                conn, (address, _port) = listener.accept()
            except OSError:
                break
            with conn:
                conn.settimeout(TCP_TIMEOUT)
                try:
                    name = conn.recv(256).decode(errors="replace").strip()
                except OSError:
                    continue
            seen[name] = address
    return seen
