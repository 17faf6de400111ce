"""flannelctl perf's parsing, statistics, ratios and rendering (no processes)."""

from __future__ import annotations

import argparse
import json

import pytest

from flannel.cli import perf
from flannel.cli.perfparse import (
    Latency,
    PathResult,
    PerfParseError,
    Throughput,
    iperf3_result,
    latency,
    percentile,
    ping_times_us,
    ratios,
    render,
    to_json,
)

PING = """PING 10.5.2.3 (10.5.2.3) 56(84) bytes of data.
64 bytes from 10.5.2.3: icmp_seq=1 ttl=62 time=0.112 ms
64 bytes from 10.5.2.3: icmp_seq=2 ttl=62 time=0.090 ms
64 bytes from 10.5.2.3: icmp_seq=3 ttl=62 time=1.50 ms

--- 10.5.2.3 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 102ms
rtt min/avg/max/mdev = 0.090/0.567/1.500/0.660 ms
"""

TCP_JSON = {
    "start": {},
    "end": {
        "sum_sent": {"bits_per_second": 9.1e9, "retransmits": 12},
        "sum_received": {"bits_per_second": 9.0e9},
    },
}
UDP_JSON = {"end": {"sum": {"bits_per_second": 9.5e8, "lost_percent": 0.5, "jitter_ms": 0.01}}}


def test_ping_times_are_read_in_microseconds() -> None:
    assert ping_times_us(PING) == pytest.approx([112.0, 90.0, 1500.0])
    assert ping_times_us("From 10.5.2.1 icmp_seq=1 Destination Host Unreachable") == []


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([5], 0.99) == 5
    summary = latency([10.0, 20.0, 30.0, 40.0, 1000.0])
    assert summary.p50_us == 30 and summary.min_us == 10 and summary.max_us == 1000
    assert summary.avg_us == pytest.approx(220.0)
    with pytest.raises(PerfParseError):
        latency([])


def test_iperf3_tcp_and_udp_results() -> None:
    tcp = iperf3_result(json.dumps(TCP_JSON), udp=False)
    assert tcp == Throughput(bits_per_second=9.0e9, retransmits=12)
    udp = iperf3_result(json.dumps(UDP_JSON), udp=True)
    assert udp.bits_per_second == 9.5e8 and udp.lost_percent == 0.5 and udp.jitter_ms == 0.01


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"error": "unable to connect to server: Connection refused"}', "Connection refused"),
        ("iperf3: error - the server is busy", "not JSON"),
        ('{"start": {}, "end": {}}', "not a finished test"),
    ],
)
def test_iperf3_failures_say_why(text: str, message: str) -> None:
    with pytest.raises(PerfParseError, match=message):
        iperf3_result(text, udp=False)


def _result(path: str, gbps: float, p50: float) -> PathResult:
    lat = Latency(10, p50, p50, p50 * 2, p50, p50, p50 * 3)
    return PathResult(path, "a", "b", tcp=Throughput(gbps * 1e9, 3), ping=lat, tcp_rr=lat)


def test_ratios_are_pod_over_node() -> None:
    q = ratios(_result("node", 10, 20), _result("pod", 8, 30))
    assert q["tcp_throughput"] == pytest.approx(0.8)
    assert q["ping_p50"] == pytest.approx(1.5) and q["tcp_rr_p99"] == pytest.approx(1.5)
    assert q["udp_throughput"] is None


def test_table_and_json_have_both_paths_and_the_ratio() -> None:
    header = {"from": "node1", "to": "node2", "backend": "vxlan", "duration": 5, "pings": 10}
    header["round_trips"] = 100
    results = [_result("node", 10, 20), _result("pod", 8, 30)]
    text = render(header, results)
    lines = text.splitlines()
    assert lines[0] == "perf node1 -> node2 (vxlan): iperf3 TCP 5 s, 10 pings, 100 TCP round trips"
    assert lines[2].split()[:3] == ["node-to-node", "10.00", "3"]
    assert lines[3].split()[:2] == ["pod-to-pod", "8.00"]
    assert lines[4].split() == ["pod/node", "0.80", "1.50", "1.50", "1.50"]
    doc = to_json(header, results)
    assert doc["paths"]["pod"]["tcp"]["bits_per_second"] == 8e9
    assert doc["ratio_pod_over_node"]["tcp_throughput"] == pytest.approx(0.8)


def test_failed_measurements_are_notes_under_the_table() -> None:
    broken = PathResult("pod", "a", "b", errors=("tcp: iperf3: connection refused",))
    text = render({"from": "x", "to": "y"}, [_result("node", 1, 1), broken])
    assert text.splitlines()[-1] == "note: pod: tcp: iperf3: connection refused"


def _args(**fields: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "duration": 5.0,
        "pings": 20,
        "round_trips": 100,
        "parallel": 1,
        "port": 5201,
        "udp": False,
        "udp_bandwidth": "1G",
        "latency_only": False,
        "remote": False,
        "lab": False,
        "node": [],
        "pod": [],
        "output": "table",
    }
    base.update(fields)
    return argparse.Namespace(**base)


def test_bad_flags_and_endpoints_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert perf.run(_args(duration=0)) == 2
    assert "--duration 0 is out of range" in capsys.readouterr().err
    assert perf.run(_args(node=["a"])) == 2
    assert "--node is given 1 time(s)" in capsys.readouterr().err
    assert perf.run(_args(node=["a", "b"])) == 2
    assert "--node 'b': the server side needs NETNS=IP" in capsys.readouterr().err
    assert perf.run(_args()) == 2
    assert "name the endpoints" in capsys.readouterr().err


def test_a_missing_iperf3_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(perf.shutil, "which", lambda _name: None)
    assert perf.run(_args(node=["a", "b=10.0.0.1"])) == 2
    err = capsys.readouterr().err
    assert "iperf3 is not installed" in err and "apt-get install iperf3" in err
