"""The udp backend's pure wire logic: TTL and checksum, ICMP net-unreachable, packet checks, GSO
runs and GRO splits, the O(1) route table and the control-channel codec."""

from __future__ import annotations

import ast
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flannel.backend.udp import wire

TUN_IP = socket.inet_aton("10.5.1.0")


def ipv4(
    *,
    src: str = "10.5.1.5",
    dst: str = "10.5.2.7",
    proto: int = 17,
    ttl: int = 64,
    payload: bytes = b"\x12\x34\x23\x28\x00\x0c\x00\x00ping",
    frag: int = 0,
    ident: int = 0x1C46,
    tos: int = 0,
) -> bytes:
    """An IPv4 packet built here, independently of the module under test."""
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        tos,
        total,
        ident,
        frag,
        ttl,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    words = sum(struct.unpack("!10H", header))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    return header[:10] + struct.pack("!H", ~words & 0xFFFF) + header[12:] + payload


def header_valid(pkt: bytes | bytearray) -> bool:
    words = sum(struct.unpack("!10H", bytes(pkt[:20])))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    return words == 0xFFFF


def test_the_rfc1071_example_checksum() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement 220d).
    assert wire.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


@given(st.binary(max_size=200))
def test_checksum_equals_the_word_by_word_definition(data: bytes) -> None:
    padded = data + b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert wire.checksum(data) == ~total & 0xFFFF


@given(
    ttl=st.integers(2, 255),
    tos=st.integers(0, 255),
    ident=st.integers(0, 0xFFFF),
    frag=st.integers(0, 0xFFFF),
    proto=st.integers(0, 255),
    src=st.integers(0, 2**32 - 1),
)
def test_ttl_decrement_keeps_the_header_checksum_valid(
    ttl: int, tos: int, ident: int, frag: int, proto: int, src: int
) -> None:
    pkt = bytearray(
        ipv4(
            ttl=ttl,
            tos=tos,
            ident=ident,
            frag=frag,
            proto=proto,
            src=socket.inet_ntoa(struct.pack("!I", src)),
        )
    )
    assert wire.decrement_ttl(pkt)
    assert pkt[8] == ttl - 1
    assert header_valid(pkt)


def test_ttl_decrement_works_at_an_offset_inside_a_coalesced_buffer() -> None:
    buf = bytearray(b"x" * 100 + ipv4(ttl=9))
    assert wire.decrement_ttl(buf, 100)
    assert buf[108] == 8 and header_valid(buf[100:])


@pytest.mark.parametrize("ttl", [0, 1])
def test_a_packet_whose_ttl_would_reach_zero_is_refused_untouched(ttl: int) -> None:
    pkt = bytearray(ipv4(ttl=ttl))
    before = bytes(pkt)
    assert not wire.decrement_ttl(pkt)
    assert bytes(pkt) == before


def test_icmp_net_unreachable_has_upstreams_contents() -> None:
    offender = ipv4(payload=b"ABCDEFGHIJKLMNOP")
    reply = wire.icmp_net_unreachable(offender, TUN_IP)
    assert reply is not None
    assert len(reply) == 20 + 8 + 20 + 8
    ver_ihl, _tos, total, _id, frag, ttl, proto, _c, src, dst = struct.unpack(
        "!BBHHHBBH4s4s", reply[:20]
    )
    assert (ver_ihl, total, frag, ttl, proto) == (0x45, 56, 0, 8, 1)
    assert src == TUN_IP and dst == socket.inet_aton("10.5.1.5")
    assert header_valid(reply)
    icmp = reply[20:]
    assert icmp[0:2] == b"\x03\x00" and icmp[4:8] == b"\0\0\0\0"
    assert wire.checksum(icmp) == 0
    assert icmp[8:] == offender[:28]


def test_icmp_quote_is_zero_padded_when_the_offender_is_shorter_than_header_plus_8() -> None:
    offender = ipv4(payload=b"abc")
    reply = wire.icmp_net_unreachable(offender, TUN_IP)
    assert reply is not None
    assert reply[28:] == offender + b"\0" * 5


@pytest.mark.parametrize(
    "offender",
    [
        ipv4(proto=1, payload=b"\x08\x00\x00\x00\x00\x01\x00\x01"),  # ICMP: never about ICMP
        ipv4(frag=0x2000 | 185),  # a non-first fragment
        ipv4(frag=7),
        b"\x45" + b"\0" * 10,  # runt
    ],
)
def test_no_icmp_for_icmp_non_first_fragments_or_runts(offender: bytes) -> None:
    assert wire.icmp_net_unreachable(offender, TUN_IP) is None


def test_the_first_fragment_with_more_fragments_set_still_gets_an_icmp() -> None:
    assert wire.icmp_net_unreachable(ipv4(frag=0x2000), TUN_IP) is not None


@pytest.mark.parametrize(
    ("pkt", "code"),
    [
        (ipv4(), wire.OK),
        (b"", wire.DROP_RUNT),
        (ipv4()[:19], wire.DROP_RUNT),
        (b"\x60" + ipv4()[1:], wire.DROP_NOT_IPV4),
        (b"\x00" * 40, wire.DROP_NOT_IPV4),
        (b"\x44" + ipv4()[1:], wire.DROP_RUNT),  # IHL 4 < 5
        (b"\x4f" + ipv4()[1:], wire.DROP_RUNT),  # IHL 15 = 60 bytes > datagram
        (ipv4() + b"trailing", wire.DROP_BAD_LENGTH),
        (ipv4()[:-1], wire.DROP_BAD_LENGTH),
    ],
)
def test_packet_checks_name_what_is_wrong(pkt: bytes, code: int) -> None:
    assert wire.check_packet(pkt) == code


def test_gso_runs_group_equal_sizes_to_one_peer_and_let_a_smaller_packet_end_a_run() -> None:
    a, b = ("192.168.0.2", 8285), ("192.168.0.3", 8285)
    sizes = [1400, 1400, 1400, 600, 1400, 1400, 1400, 52, 52]
    hops: list[object] = [a, a, a, a, a, b, b, b, a]
    assert list(wire.gso_runs(sizes, hops)) == [(0, 4), (4, 5), (5, 8), (8, 9)]


def test_gso_runs_respect_64_segments_and_65507_bytes() -> None:
    hop = ("192.168.0.2", 8285)
    small = list(wire.gso_runs([100] * 130, [hop] * 130))
    assert small == [(0, 64), (64, 128), (128, 130)]
    big = list(wire.gso_runs([1472] * 50, [hop] * 50))
    assert big == [(0, 44), (44, 50)]
    assert 44 * 1472 <= wire.MAX_GSO_BYTES < 45 * 1472


@given(st.lists(st.tuples(st.sampled_from([52, 600, 1400]), st.integers(0, 2)), max_size=80))
def test_gso_runs_cover_the_burst_in_order_with_whole_packets(burst: list[tuple[int, int]]) -> None:
    sizes = [s for s, _ in burst]
    hops: list[object] = [h for _, h in burst]
    runs = list(wire.gso_runs(sizes, hops))
    assert [i for start, end in runs for i in range(start, end)] == list(range(len(sizes)))
    for start, end in runs:
        seg = sizes[start]
        assert len({hops[i] for i in range(start, end)}) == 1
        assert all(sizes[i] == seg for i in range(start, end - 1)) and sizes[end - 1] <= seg
        assert end - start <= 64 and sum(sizes[start:end]) <= 65507


def test_gro_segments_split_a_coalesced_read() -> None:
    assert list(wire.gro_segments(3000, 1400)) == [(0, 1400), (1400, 1400), (2800, 200)]
    assert list(wire.gro_segments(900, 0)) == [(0, 900)]
    assert list(wire.gro_segments(900, 1400)) == [(0, 900)]
    # An empty datagram is one (runt) segment; it once crashed the receive thread.
    assert list(wire.gro_segments(0, 0)) == [(0, 0)]


def ip_int(text: str) -> int:
    return int(struct.unpack("!I", socket.inet_aton(text))[0])


def test_route_table_finds_the_peer_of_a_subnet_and_nothing_outside() -> None:
    table = wire.RouteTable(
        [
            (ip_int("10.5.2.0"), 24, "192.168.0.2", 8285),
            (ip_int("10.5.3.0"), 24, "192.168.0.3", 8285),
        ]
    )
    assert table.lookup(ip_int("10.5.2.77")) == ("192.168.0.2", 8285)
    assert table.lookup(ip_int("10.5.3.1")) == ("192.168.0.3", 8285)
    assert table.lookup(ip_int("10.5.4.1")) is None
    assert table.peers == {"192.168.0.2", "192.168.0.3"}
    assert len(table.levels) == 1  # one SubnetLen: one dict probe per lookup


def test_route_table_changes_replace_delete_and_mixed_lengths_prefer_the_longest() -> None:
    table = wire.RouteTable([(ip_int("10.5.2.0"), 24, "192.168.0.2", 8285)])
    table = table.with_changes(
        add=[
            (ip_int("10.5.2.0"), 24, "192.168.0.9", 8285),
            (ip_int("10.5.0.0"), 16, "192.168.0.4", 1),
        ],
    )
    assert table.lookup(ip_int("10.5.2.1")) == ("192.168.0.9", 8285)
    assert table.lookup(ip_int("10.5.7.1")) == ("192.168.0.4", 1)
    table = table.with_changes(delete=[(ip_int("10.5.2.99"), 24, "", 0)])
    assert table.lookup(ip_int("10.5.2.1")) == ("192.168.0.4", 1)
    assert table.peers == {"192.168.0.4"}


def test_control_messages_round_trip_and_split_large_tables() -> None:
    entries = [(ip_int(f"10.{i >> 8}.{i & 255}.0"), 24, "192.168.0.2", 8285) for i in range(5000)]
    msgs = wire.encode_entries(wire.CMD_ADD, entries)
    assert len(msgs) == 2 and all(m[:1] == wire.CMD_ADD for m in msgs)
    assert [e for m in msgs for e in wire.decode_entries(m[1:])] == entries
    assert wire.encode_entries(wire.CMD_DEL, []) == [wire.CMD_DEL]


@pytest.mark.parametrize("body", [b"\0" * 10, b"\0\0\0\0\x21\0\0\0\0\0\0"])
def test_malformed_control_entries_are_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        wire.decode_entries(body)


def test_counters_round_trip_and_garbage_is_refused() -> None:
    values = list(range(len(wire.COUNTER_NAMES)))
    assert list(wire.decode_counters(wire.encode_counters(values)).values()) == values
    with pytest.raises(ValueError):
        wire.decode_counters(b"T123")


def test_wire_is_pure_and_the_forwarder_imports_only_what_the_data_path_needs() -> None:
    src = Path(wire.__file__).parent
    allowed = {
        "wire.py": {"__future__", "struct", "collections.abc"},
        "forwarder.py": {
            "__future__",
            "io",
            "os",
            "select",
            "socket",
            "struct",
            "sys",
            "threading",
            "collections.abc",
            "flannel.backend.udp",
        },
        "tun.py": {"__future__", "contextlib", "fcntl", "os", "socket", "struct"},
    }
    for name, modules in allowed.items():
        tree = ast.parse((src / name).read_text())
        found = {
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert found <= modules, f"{name} imports {found - modules}"
