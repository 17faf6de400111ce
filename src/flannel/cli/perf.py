"""``flannelctl perf``: pod-to-pod versus node-to-node throughput and latency between two nodes.

As Kube-OVN's ``perf``: the same measurements over the underlay (node to node) and over flannel
(pod to pod) in one run, and their ratio — what the overlay costs on this network. Per path:
iperf3 TCP throughput (``-J``, retransmits; ``--udp`` adds a UDP run with loss and jitter), ping
RTT (p50/avg) and a TCP request/response loop (one byte each way, ``TCP_NODELAY``; p50/p99), which
shows per-packet latency without ICMP's special handling.

Two ways to name the endpoints:
- ``--lab`` (with ``--prefix``/``--state-dir``): two nodes of a running lab (``--from``/``--to``,
  default the first two); two throwaway pods are created on them through the CNI plugin and
  deleted afterwards;
- ``--node NETNS`` ``--node NETNS=IP`` and ``--pod NETNS`` ``--pod NETNS=IP``: client side first,
  then the server side with the address it listens on (``-`` for this namespace; on two real
  nodes run iperf3 -s yourself on the far side and give ``--node -=IP --remote``).

Every process perf starts (iperf3 server and client, ping) is recorded by PID and ended by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flannel.cli.perfparse import (
    Latency,
    PathResult,
    PerfParseError,
    Throughput,
    iperf3_result,
    latency,
    ping_times_us,
    render,
    to_json,
)

DEFAULT_PORT = 5201
IPERF3_HINT = "iperf3 is not installed: install it (apt-get install iperf3), or pass --latency-only"


class PerfError(Exception):
    """perf cannot run as asked (the message names the input or the missing tool)."""


@dataclass(frozen=True)
class Side:
    """One end of a path: its namespace (None: here) and, for a server, the address it serves on."""

    netns: str | None
    ip: str = ""
    label: str = ""

    def describe(self) -> str:
        where = self.netns or "this namespace"
        return f"{where} {self.ip}".strip()


@dataclass(frozen=True)
class Options:
    """How much to measure."""

    duration: float = 5.0
    udp: bool = False
    udp_bandwidth: str = "1G"
    pings: int = 20
    round_trips: int = 2000
    port: int = DEFAULT_PORT
    parallel: int = 1
    latency_only: bool = False
    remote: bool = False
    """The server-side iperf3 is already running elsewhere (a real remote node)."""


class Processes:
    """Every process perf starts, by PID, so each is ended by its PID even on failure."""

    def __init__(self) -> None:
        self.started: dict[int, subprocess.Popen[str]] = {}
        self.history: list[tuple[int, str]] = []

    def start(
        self, argv: Sequence[str], netns: str | None, *, capture: bool = True
    ) -> subprocess.Popen[str]:
        """Start ``argv`` in ``netns``; without ``capture`` its output is discarded (a server
        that must never block on a full pipe)."""
        full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=out, text=True)
        self.started[proc.pid] = proc
        self.history.append((proc.pid, " ".join(argv)))
        return proc

    def run(self, argv: Sequence[str], netns: str | None, timeout: float) -> tuple[int, str, str]:
        """Run to completion (killed by PID after ``timeout``): (exit code, stdout, stderr)."""
        proc = self.start(argv, netns)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            return 124, "", f"{argv[0]} did not finish within {timeout:g}s"
        self.started.pop(proc.pid, None)
        return proc.returncode, out, err

    def stop(self, proc: subprocess.Popen[str], timeout: float = 5.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``; reaped."""
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.communicate()
        else:
            proc.communicate()
        self.started.pop(proc.pid, None)

    def stop_all(self) -> None:
        for proc in list(self.started.values()):
            self.stop(proc)


# ---------------------------------------------------------------- measurements


def _listening(netns: str | None, port: int) -> bool:
    argv = ["ss", "-Htln", f"sport = :{port}"]
    full = ["ip", "netns", "exec", netns, *argv] if netns else argv
    done = subprocess.run(full, capture_output=True, text=True, timeout=10, check=False)
    return bool(done.stdout.strip())


def iperf3(
    procs: Processes, client: Side, server: Side, options: Options, *, udp: bool
) -> Throughput:
    """One iperf3 test client → server (a one-off server started in the server's namespace)."""
    server_proc = None
    if not options.remote:
        argv = ["iperf3", "-s", "-1", "-p", str(options.port), "-B", server.ip]
        server_proc = procs.start(argv, server.netns, capture=False)
        deadline = time.monotonic() + 10
        while not _listening(server.netns, options.port):
            if server_proc.poll() is not None or time.monotonic() > deadline:
                procs.stop(server_proc)
                raise PerfError(f"iperf3 server on {server.describe()} did not start")
            time.sleep(0.05)
    argv = ["iperf3", "-c", server.ip, "-p", str(options.port), "-J"]
    argv += ["-t", f"{options.duration:g}", "-P", str(options.parallel)]
    if udp:
        argv += ["-u", "-b", options.udp_bandwidth]
    try:
        _code, out, err = procs.run(argv, client.netns, options.duration + 30)
        try:
            return iperf3_result(out, udp=udp)
        except PerfParseError as exc:
            raise PerfError(f"{exc} {err.strip()[:200]}".strip()) from exc
    finally:
        if server_proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server_proc.wait(timeout=5)  # -1: it ends after the one test
            procs.stop(server_proc)


def ping(procs: Processes, client: Side, server: Side, count: int) -> Latency:
    """ICMP echo RTTs (after one unmeasured ping that resolves the neighbour)."""
    procs.run(["ping", "-c", "1", "-W", "2", server.ip], client.netns, 10)
    argv = ["ping", "-c", str(count), "-i", "0.05", "-W", "1", server.ip]
    _code, out, err = procs.run(argv, client.netns, count * 1.5 + 10)
    samples = ping_times_us(out)
    if not samples:
        raise PerfError(f"no ping reply from {server.describe()}: {(err or out).strip()[-200:]}")
    return latency(samples)


def _in_netns(netns: str | None, make: Any) -> Any:
    from flannel.dataplane.rtnl import in_netns

    return in_netns(netns, make)


def _echo(listener: socket.socket, done: threading.Event) -> None:
    try:
        conn, _addr = listener.accept()
    except OSError:
        return
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not done.is_set():
            try:
                data = conn.recv(64)
            except OSError:
                return
            if not data:
                return
            conn.sendall(data)


def tcp_rr(client: Side, server: Side, count: int) -> Latency:
    """Round trips of one byte over one TCP connection, in microseconds (after 50 warm-ups).

    Both sockets are made inside their namespaces by a thread that entered them (a socket stays
    where it was created), so no helper process is needed.
    """
    family = socket.AF_INET6 if ":" in server.ip else socket.AF_INET

    def listen() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((server.ip, 0))
        sock.listen(1)
        return sock

    try:
        listener: socket.socket = _in_netns(server.netns, listen)
    except OSError as exc:
        raise PerfError(f"cannot serve TCP round trips on {server.describe()}: {exc}") from exc
    listener.settimeout(10)
    done = threading.Event()
    echo = threading.Thread(target=_echo, args=(listener, done), name="perf-echo", daemon=True)
    echo.start()
    samples: list[float] = []
    try:
        conn: socket.socket = _in_netns(
            client.netns, lambda: socket.socket(family, socket.SOCK_STREAM)
        )
        with conn:
            conn.settimeout(5)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.connect((server.ip, listener.getsockname()[1]))
            for i in range(count + 50):
                started = time.perf_counter_ns()
                conn.sendall(b"x")
                if not conn.recv(1):
                    raise PerfError(f"TCP echo on {server.describe()} closed the connection")
                if i >= 50:
                    samples.append((time.perf_counter_ns() - started) / 1000.0)
    except OSError as exc:
        raise PerfError(f"TCP round trips to {server.describe()}: {exc}") from exc
    finally:
        done.set()
        listener.close()
        echo.join(timeout=5)
    return latency(samples)


def measure(
    path: str, client: Side, server: Side, options: Options, procs: Processes
) -> PathResult:
    """Every measurement of one path; a failed one is noted and the others still run."""
    results: dict[str, Any] = {}
    errors: list[str] = []
    steps: list[tuple[str, Any]] = [
        ("ping", lambda: ping(procs, client, server, options.pings)),
        ("tcp_rr", lambda: tcp_rr(client, server, options.round_trips)),
    ]
    if not options.latency_only:
        steps.append(("tcp", lambda: iperf3(procs, client, server, options, udp=False)))
        if options.udp:
            steps.append(("udp", lambda: iperf3(procs, client, server, options, udp=True)))
    for name, step in steps:
        try:
            results[name] = step()
        except (PerfError, PerfParseError) as exc:
            errors.append(f"{name}: {exc}")
    return PathResult(
        path=path,
        client=client.describe(),
        server=server.describe(),
        errors=tuple(errors),
        **results,
    )


# ---------------------------------------------------------------- endpoints


def _side(text: str, flag: str, *, server: bool) -> Side:
    netns, _, ip = text.partition("=")
    if server and not ip:
        raise PerfError(
            f"{flag} {text!r}: the server side needs NETNS=IP (the address it serves on)"
        )
    return Side(None if netns in ("", "-") else netns, ip, netns)


def _pairs(args: argparse.Namespace) -> list[tuple[str, Side, Side]]:
    pairs = []
    for path, flag, values in (("node", "--node", args.node), ("pod", "--pod", args.pod)):
        if not values:
            continue
        if len(values) != 2:
            raise PerfError(
                f"{flag} is given {len(values)} time(s): give it twice (client, then NETNS=IP)"
            )
        pairs.append(
            (path, _side(values[0], flag, server=False), _side(values[1], flag, server=True))
        )
    if not pairs:
        raise PerfError("name the endpoints: --lab, or --node/--pod twice each (see --help)")
    return pairs


def _run_pairs(pairs: list[tuple[str, Side, Side]], options: Options) -> list[PathResult]:
    procs = Processes()
    try:
        return [measure(path, client, server, options, procs) for path, client, server in pairs]
    finally:
        procs.stop_all()


def run_lab(
    state_dir: Path, source: str, target: str, options: Options
) -> tuple[dict[str, Any], list[PathResult]]:
    """Measure between two nodes of a running lab, through two throwaway CNI pods."""
    from flannel.lab.cluster import Lab

    lab = Lab.attach(state_dir)
    by_name = {node.name: node for node in lab.nodes}
    names = [n.name for n in lab.nodes]
    source = source or names[0]
    target = target or names[1]
    for name, flag in ((source, "--from"), (target, "--to")):
        if name not in by_name:
            raise PerfError(f"{flag} {name!r}: the lab has nodes {', '.join(names)}")
    if source == target:
        raise PerfError(f"--from and --to are both {source}: pick two nodes")
    a, b = by_name[source], by_name[target]
    pod_a = lab.add_pod(a)
    try:
        pod_b = lab.add_pod(b)
        try:
            pairs = [
                ("node", Side(a.netns, "", a.name), Side(b.netns, b.underlay_ip, b.name)),
                ("pod", Side(pod_a.netns, "", pod_a.name), Side(pod_b.netns, pod_b.ip, pod_b.name)),
            ]
            results = _run_pairs(pairs, options)
        finally:
            lab.delete_pod(pod_b)
    finally:
        lab.delete_pod(pod_a)
    return {"from": source, "to": target, "backend": lab.spec.backend}, results


# ---------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``perf``."""
    parser = subparsers.add_parser(
        "perf",
        help="pod-to-pod vs node-to-node throughput and latency between two nodes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lab", action="store_true", help="two nodes of a running lab")
    parser.add_argument("--prefix", default="pfl", help="the lab's prefix (default pfl)")
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="default /tmp/pyflannel-lab-<prefix>"
    )
    parser.add_argument(
        "--from", dest="source", default="", help="lab node measured from (default the first)"
    )
    parser.add_argument(
        "--to", dest="target", default="", help="lab node measured to (default the second)"
    )
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NETNS[=IP]",
        help="node endpoints: client, then server NETNS=IP",
    )
    parser.add_argument(
        "--pod",
        action="append",
        default=[],
        metavar="NETNS[=IP]",
        help="pod endpoints: client, then server NETNS=IP",
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="the server side runs `iperf3 -s` itself (a real remote node)",
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per iperf3 test (default 5)"
    )
    parser.add_argument("--udp", action="store_true", help="also a UDP test (loss, jitter)")
    parser.add_argument("--udp-bandwidth", default="1G", help="iperf3 -b for --udp (default 1G)")
    parser.add_argument("--parallel", type=int, default=1, help="iperf3 -P streams (default 1)")
    parser.add_argument("--pings", type=int, default=20, help="pings per path (default 20)")
    parser.add_argument(
        "--round-trips",
        type=int,
        default=2000,
        help="TCP request/response round trips (default 2000)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="iperf3 port (default 5201)")
    parser.add_argument(
        "--latency-only", action="store_true", help="no iperf3: ping and TCP round trips only"
    )
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.set_defaults(func=run)


def options_of(args: argparse.Namespace) -> Options:
    """Validated measurement options (PerfError names the bad flag)."""
    checks = (
        ("--duration", args.duration > 0),
        ("--pings", args.pings > 0),
        ("--round-trips", args.round_trips > 0),
        ("--parallel", 1 <= args.parallel <= 128),
        ("--port", 1 <= args.port <= 65535),
    )
    for flag, ok in checks:
        if not ok:
            raise PerfError(f"{flag} {getattr(args, flag[2:].replace('-', '_'))} is out of range")
    return Options(
        duration=args.duration,
        udp=args.udp,
        udp_bandwidth=args.udp_bandwidth,
        pings=args.pings,
        round_trips=args.round_trips,
        port=args.port,
        parallel=args.parallel,
        latency_only=args.latency_only,
        remote=args.remote,
    )


def run(args: argparse.Namespace) -> int:
    """Measure and print; 0 when every measurement succeeded, 1 when one failed, 2 when perf
    could not run at all."""
    from flannel.errors import FlannelError

    try:
        options = options_of(args)
        if not options.latency_only and shutil.which("iperf3") is None:
            raise PerfError(IPERF3_HINT)
        if args.lab:
            from flannel.lab.cli import default_state_dir

            state_dir = args.state_dir or default_state_dir(args.prefix)
            header, results = run_lab(state_dir, args.source, args.target, options)
        else:
            pairs = _pairs(args)
            header = {"from": pairs[0][1].describe(), "to": pairs[0][2].describe(), "backend": ""}
            results = _run_pairs(pairs, options)
    except (PerfError, FlannelError) as exc:
        print(f"flannelctl perf: {exc}", file=sys.stderr)
        return 2
    header |= {
        "duration": options.duration,
        "pings": options.pings,
        "round_trips": options.round_trips,
        "parallel": options.parallel,
    }
    if args.output == "json":
        print(json.dumps(to_json(header, results), indent=2))
    else:
        print(render(header, results))
    return 1 if any(r.errors for r in results) else 0
