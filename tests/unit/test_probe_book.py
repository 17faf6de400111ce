"""The pinger's pure parts: which address proves a peer's data path, and how probes are counted."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel.dataplane.icmp import checksum, decode_reply, encode_echo
from flannel.model.lease import Lease, LeaseAttrs
from flannel.model.probe import WINDOW, ProbeBook, Target, probe_target, targets_of


def lease(
    subnet: str | None, backend: str = "vxlan", ip: str = "192.168.1.2", v6: str = ""
) -> Lease:
    return Lease(
        IPv4Network(subnet) if subnet else None,
        LeaseAttrs(IPv4Address(ip), None, backend, None),
        ipv6_subnet=IPv6Network(v6) if v6 else None,
        enable_ipv4=subnet is not None,
        enable_ipv6=bool(v6),
    )


@pytest.mark.parametrize(
    ("backend", "address"),
    [
        ("vxlan", "10.5.3.0"),  # flannel.1 holds the subnet's first address
        ("udp", "10.5.3.0"),
        ("wireguard", "10.5.3.0"),
        ("ipip", "10.5.3.0"),
        ("host-gw", "10.5.3.1"),  # no flannel device: the pod gateway on cni0
        ("ipsec", "10.5.3.1"),
        ("extension", "10.5.3.1"),
    ],
)
def test_the_probe_target_is_the_peers_overlay_address(backend: str, address: str) -> None:
    target = probe_target(lease("10.5.3.0/24", backend))
    assert target == Target("192.168.1.2", IPv4Address(address))


def test_alloc_peers_have_no_data_path_to_probe() -> None:
    assert probe_target(lease("10.5.3.0/24", "alloc")) is None
    assert targets_of([lease("10.5.3.0/24", "alloc"), lease("10.5.4.0/24")]) == {
        "10.5.4.0": Target("192.168.1.2", IPv4Address("10.5.4.0"))
    }


def test_an_ipv6_only_peer_is_probed_over_ipv6_and_dual_stack_over_ipv4() -> None:
    only6 = probe_target(lease(None, v6="fd00:10:5:3::/64"))
    assert only6 is not None and only6.address == IPv6Address("fd00:10:5:3::")
    dual = probe_target(lease("10.5.3.0/24", v6="fd00:10:5:3::/64"))
    assert dual is not None and dual.address == IPv4Address("10.5.3.0")


def book_with(*keys: str, timeout: float = 1.0) -> ProbeBook:
    book = ProbeBook(timeout)
    book.retain({k: Target(f"peer-{k}", IPv4Address(k)) for k in keys})
    return book


def test_a_reply_from_the_probed_address_gives_the_rtt_once() -> None:
    book = book_with("10.5.3.0")
    token = book.sent("10.5.3.0", now=100.0)
    assert book.in_flight == 1
    assert book.answered(token, "10.5.3.0", now=100.25) == 0.25
    assert book.answered(token, "10.5.3.0", now=100.5) is None  # a duplicate counts nothing
    stats = book.peers["10.5.3.0"]
    assert (stats.sent, stats.lost, stats.rtt, stats.loss_ratio) == (1, 0, 0.25, 0.0)
    assert book.in_flight == 0


def test_a_reply_from_another_address_or_with_an_unknown_token_is_ignored() -> None:
    book = book_with("10.5.3.0", "10.5.4.0")
    token = book.sent("10.5.3.0", now=1.0)
    assert book.answered(token, "10.5.4.0", now=1.1) is None
    assert book.answered(token + 7, "10.5.3.0", now=1.1) is None
    assert book.in_flight == 1 and book.peers["10.5.3.0"].rtt is None


def test_an_unanswered_probe_is_lost_at_its_timeout_and_a_late_reply_changes_nothing() -> None:
    book = book_with("10.5.3.0", timeout=2.0)
    token = book.sent("10.5.3.0", now=10.0)
    assert book.next_expiry() == 12.0
    assert book.expire(11.9) == []
    assert book.expire(12.0) == ["10.5.3.0"]
    assert book.answered(token, "10.5.3.0", now=12.5) is None
    stats = book.peers["10.5.3.0"]
    assert (stats.sent, stats.lost, stats.rtt, stats.loss_ratio) == (1, 1, None, 1.0)
    assert book.next_expiry() is None


def test_a_refused_send_is_lost_at_once() -> None:
    book = book_with("10.5.3.0")
    book.send_failed(book.sent("10.5.3.0", now=1.0))
    stats = book.peers["10.5.3.0"]
    assert (stats.sent, stats.lost, book.in_flight) == (1, 1, 0)


def test_the_loss_ratio_covers_the_last_window_of_resolved_probes() -> None:
    book = book_with("10.5.3.0", timeout=1.0)
    now = 0.0
    for _ in range(WINDOW):  # a full window lost
        book.sent("10.5.3.0", now)
        now += 2.0
        book.expire(now)
    assert book.peers["10.5.3.0"].loss_ratio == 1.0
    for _ in range(WINDOW // 2):  # the path comes back: half the window answered
        book.answered(book.sent("10.5.3.0", now), "10.5.3.0", now + 0.01)
        now += 2.0
    assert book.peers["10.5.3.0"].loss_ratio == 0.5
    assert book.peers["10.5.3.0"].lost == WINDOW  # the counter keeps the history


def test_a_removed_peer_takes_its_figures_and_outstanding_probes_with_it() -> None:
    book = book_with("10.5.3.0", "10.5.4.0")
    gone = book.sent("10.5.4.0", now=1.0)
    book.sent("10.5.3.0", now=1.0)
    book.retain({"10.5.3.0": Target("peer-10.5.3.0", IPv4Address("10.5.3.0"))})
    assert set(book.peers) == {"10.5.3.0"}
    assert book.in_flight == 1
    assert book.answered(gone, "10.5.4.0", now=1.1) is None


def test_retain_names_the_peers_it_has_not_seen_before() -> None:
    book = ProbeBook(1.0)
    first = {"10.5.3.0": Target("a", IPv4Address("10.5.3.0"))}
    assert book.retain(first) == {"10.5.3.0"}
    assert book.retain(first) == set()
    both = {**first, "10.5.4.0": Target("b", IPv4Address("10.5.4.0"))}
    assert book.retain(both) == {"10.5.4.0"}


def test_a_peer_that_changed_its_name_starts_over() -> None:
    book = book_with("10.5.3.0")
    book.send_failed(book.sent("10.5.3.0", now=1.0))
    book.retain({"10.5.3.0": Target("192.168.9.9", IPv4Address("10.5.3.0"))})
    stats = book.peers["10.5.3.0"]
    assert (stats.target.peer, stats.sent, stats.lost) == ("192.168.9.9", 0, 0)


def test_tokens_are_unique_and_never_zero() -> None:
    book = book_with("10.5.3.0")
    tokens = {book.sent("10.5.3.0", now=float(i)) for i in range(1000)}
    assert len(tokens) == 1000 and 0 not in tokens


def test_a_probe_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        ProbeBook(0)


def _reply_of(request: bytes) -> bytes:
    """What a Linux peer answers to an IPv4 echo request (type 0, same id, seq and payload)."""
    _kind, code, _sum, ident, seq = struct.unpack_from("!BBHHH", request)
    body = struct.pack("!BBHHH", 0, code, 0, ident, seq) + request[8:]
    return struct.pack("!BBHHH", 0, code, checksum(body), ident, seq) + request[8:]


def test_an_ipv4_echo_request_has_a_valid_checksum_and_its_reply_gives_the_token_back() -> None:
    request = encode_echo(socket.AF_INET, 0x1234, 0xDEADBEEF)
    assert checksum(request) == 0
    assert request[0] == 8 and struct.unpack_from("!HH", request, 4) == (0x1234, 0xBEEF)
    reply = _reply_of(request)
    assert decode_reply(socket.AF_INET, reply, ip_header=False, ident=0x1234) == 0xDEADBEEF
    assert decode_reply(socket.AF_INET, reply, ip_header=False, ident=None) == 0xDEADBEEF
    assert decode_reply(socket.AF_INET, reply, ip_header=False, ident=0x4321) is None
    assert decode_reply(socket.AF_INET, request, ip_header=False, ident=0x1234) is None


def test_a_raw_ipv4_datagram_is_decoded_past_its_ip_header() -> None:
    reply = _reply_of(encode_echo(socket.AF_INET, 7, 42))
    header = bytes([0x46]) + bytes(23)  # version 4, IHL 6 (one option word)
    assert decode_reply(socket.AF_INET, header + reply, ip_header=True, ident=7) == 42
    assert decode_reply(socket.AF_INET, header[:10], ip_header=True, ident=7) is None


def test_foreign_echo_replies_and_truncated_ones_are_not_ours() -> None:
    reply = _reply_of(encode_echo(socket.AF_INET, 7, 42))
    foreign = reply[:8] + b"x" * (len(reply) - 8)  # someone else's ping, same id and seq
    assert decode_reply(socket.AF_INET, foreign, ip_header=False, ident=7) is None
    assert decode_reply(socket.AF_INET, reply[:-1], ip_header=False, ident=7) is None
    mismatched = reply[:6] + struct.pack("!H", 43) + reply[8:]  # seq is not the token's low half
    assert decode_reply(socket.AF_INET, mismatched, ip_header=False, ident=7) is None


def test_an_ipv6_echo_request_leaves_the_checksum_to_the_kernel() -> None:
    request = encode_echo(socket.AF_INET6, 9, 5)
    assert request[0] == 128 and request[2:4] == b"\x00\x00"
    reply = bytes([129]) + request[1:]
    assert decode_reply(socket.AF_INET6, reply, ip_header=False, ident=9) == 5
