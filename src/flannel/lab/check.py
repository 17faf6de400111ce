"""The connectivity check: pod↔pod on the same node and across nodes, TCP, and pod→wan.

- ping: one packet, 1 s timeout, many in parallel. Every ordered pod pair while the lab has at most
  ``FULL_MATRIX_PODS`` pods; beyond that every pod pings its own node's pods and the first pod of
  three other nodes (next, next-but-one, opposite), which still crosses every node pair class.
- warm-up: before the pings are measured, one direction of every cross-node pair is pinged once and
  not reported (``plan_warmup``: a WireGuard tunnel opened from both ends at once stalls for 5 s).
- tcp: every pod connects to a pod on the next node; the listener must see the *pod* address as the
  source (traffic inside the cluster network must not be masqueraded).
- wan (only with --ip-masq): every pod pings the wan host and connects to it over TCP; the wan host
  must see the pod's *node* underlay address (masquerade works; the wan host has no route back to
  pods, so an unmasqueraded packet gets no answer).
- IPv6 (IPv6-only and dual-stack labs): the same probes over the pods' IPv6 addresses, as kinds
  ``ping6`` / ``tcp6`` / ``wan-ping6`` / ``wan-tcp6``; a dual-stack lab runs both sets.

TCP listeners and clients are sockets of this process created inside the namespaces (netns.socket_in),
so no helper programs run in pods.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import ipaddress
import selectors
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from flannel.lab import netns

FULL_MATRIX_PODS = 30
PING_WORKERS = 24
TCP_PORT = 7777
TCP_TIMEOUT = 3.0


@dataclass(frozen=True)
class Endpoint:
    """Something that takes part in the check: a pod (with its node) or the wan host.

    ``ip``/``node_ip`` are IPv4 ("" when the lab has none), ``ip6``/``node_ip6`` IPv6.
    """

    name: str
    netns: str
    ip: str
    node: int = 0
    node_ip: str = ""
    ip6: str = ""
    node_ip6: str = ""

    def as_ipv6(self) -> Endpoint:
        """The same endpoint with its IPv6 addresses in ``ip``/``node_ip`` (what the probes use)."""
        return dataclasses.replace(self, ip=self.ip6, node_ip=self.node_ip6, ip6="", node_ip6="")


@dataclass(frozen=True)
class CheckRow:
    """One probe: kind (``ping`` / ``tcp`` / ``wan-ping`` / ``wan-tcp``, ``…6`` over IPv6), who,
    whom, result."""

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


def plan_warmup(pairs: Sequence[tuple[Endpoint, Endpoint]]) -> list[tuple[Endpoint, Endpoint]]:
    """One direction of every cross-node pair among ``pairs``, the lower-numbered node's pod first
    (pure): the probes that open each node pair's tunnel before the matrix runs.

    WireGuard opens a tunnel with a handshake, and when both ends start one at the same moment
    (the matrix pings a→b and b→a at once) each end consumes the other's initiation and answers
    it, which voids its own: both then wait out REKEY_TIMEOUT (5 s) before trying again, far
    beyond a probe's 1 s. That is the protocol's way, not a broken path, so the check opens every
    tunnel from one side first and then measures.
    """
    seen: set[frozenset[str]] = set()
    out: list[tuple[Endpoint, Endpoint]] = []
    for a, b in pairs:
        pair = frozenset((a.name, b.name))
        if a.node == b.node or pair in seen:
            continue
        seen.add(pair)
        out.append((a, b) if a.node < b.node else (b, a))
    return out


def plan_tcp(pods: Sequence[Endpoint]) -> list[tuple[Endpoint, Endpoint]]:
    """Each pod → the first pod of the next node that has pods (pure)."""
    nodes = sorted({pod.node for pod in pods})
    first = {node: next(p for p in pods if p.node == node) for node in nodes}
    if len(nodes) < 2:
        return []
    return [(pod, first[nodes[(nodes.index(pod.node) + 1) % len(nodes)]]) for pod in pods]


def run_check(pods: Sequence[Endpoint], wan: Endpoint | None) -> CheckReport:
    """Probe everything in parallel and collect the rows: IPv4 where the pods have IPv4 addresses,
    then IPv6 where they have IPv6 addresses."""
    report = CheckReport(pods=list(pods))
    if pods and all(pod.ip for pod in pods):
        report.rows += _family_rows(pods, wan if wan is not None and wan.ip else None, "")
    if pods and all(pod.ip6 for pod in pods):
        wan6 = wan.as_ipv6() if wan is not None and wan.ip6 else None
        report.rows += _family_rows([pod.as_ipv6() for pod in pods], wan6, "6")
    return report


def _family_rows(pods: Sequence[Endpoint], wan: Endpoint | None, suffix: str) -> list[CheckRow]:
    """Every probe of one address family (the endpoints' ``ip``/``node_ip``); kinds get ``suffix``."""
    rows: list[CheckRow] = []
    pairs = plan_pings(pods)
    pings = [(f"ping{suffix}", a, b) for a, b in pairs]
    if wan is not None:
        pings += [(f"wan-ping{suffix}", pod, wan) for pod in pods]
    with concurrent.futures.ThreadPoolExecutor(PING_WORKERS) as pool:
        list(pool.map(lambda pair: _ping("warmup", *pair), plan_warmup(pairs)))  # not reported
        rows += pool.map(lambda job: _ping(*job), pings)
    rows += _tcp_round(f"tcp{suffix}", plan_tcp(pods), expect_source="pod")
    if wan is not None:
        rows += _tcp_round(f"wan-tcp{suffix}", [(pod, wan) for pod in pods], expect_source="node")
    return rows


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _ping(kind: str, src: Endpoint, dst: Endpoint) -> CheckRow:
    flag = "-6" if _family(dst.ip) == socket.AF_INET6 else "-4"
    result = netns.run(
        ["ping", flag, "-c1", "-W1", "-q", dst.ip], netns=src.netns, check=False, timeout=10
    )
    ok = result.returncode == 0
    return CheckRow(kind, src.name, dst.name, ok, "" if ok else f"no reply from {dst.ip}")


def _same_ip(a: str | None, b: str) -> bool:
    """Address equality across spellings (``fd00::0a`` is ``fd00::a``)."""
    try:
        return a is not None and ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _tcp_round(
    kind: str, pairs: Sequence[tuple[Endpoint, Endpoint]], expect_source: str
) -> list[CheckRow]:
    listeners: dict[str, socket.socket] = {}
    try:
        for _, dst in pairs:
            if dst.netns not in listeners:
                listener = netns.socket_in(dst.netns, _family(dst.ip))
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
        ok = _same_ip(got, want)
        detail = "" if ok else f"{dst.name} saw source {got}, expected {want} ({expect_source})"
        rows.append(CheckRow(kind, src.name, dst.name, ok, detail))
    return rows


def _connect(src: Endpoint, dst: Endpoint) -> str | None:
    sock = netns.socket_in(src.netns, _family(dst.ip))
    with sock:
        sock.settimeout(TCP_TIMEOUT)
        try:
            sock.connect((dst.ip, TCP_PORT))
            sock.sendall(src.name.encode() + b"\n")
        except OSError as exc:
            return f"connect to {dst.ip}:{TCP_PORT} failed: {exc}"
    return None


def _accept_all(listeners: dict[str, socket.socket], expected: int) -> dict[str, str]:
    """Accept every client that connected; map the client's announced name → the source seen.

    A client's connect() returns when it has the SYN-ACK, but its ACK and its name may still be on
    the way (a userspace forwarder such as wireguard-go or the udp backend takes a while): the
    listener only queues the connection when that ACK arrives. So wait on all listeners together
    until every connected client has been accepted or ``TCP_TIMEOUT`` has passed.
    """
    seen: dict[str, str] = {}
    deadline = time.monotonic() + TCP_TIMEOUT
    with selectors.DefaultSelector() as selector:
        for listener in listeners.values():
            listener.setblocking(False)
            selector.register(listener, selectors.EVENT_READ, data=listener)
        while len(seen) < expected and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                accepted = _accept_one(key.data)
                if accepted is not None:
                    seen[accepted[0]] = accepted[1]
    return seen


def _accept_one(listener: socket.socket) -> tuple[str, str] | None:
    """One pending connection: (the name the client sent, its source address); None if gone."""
    try:
        conn, peer = listener.accept()
    except OSError:
        return None
    with conn:
        conn.settimeout(TCP_TIMEOUT)
        try:
            name = conn.recv(256).decode(errors="replace").strip()
        except OSError:
            return None
    return name, peer[0]
