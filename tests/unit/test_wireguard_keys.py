"""WireGuard keys: pure X25519 against RFC 7748 and an independent implementation; the key file."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from flannel.backend.wireguard.keyfile import key_file_path, load_or_create_private_key
from flannel.errors import BackendError, ConfigError
from flannel.model.wgkeys import generate_private_key, parse_key, public_key, to_hex, x25519

RFC7748_VECTORS = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
]


@pytest.mark.parametrize(("scalar", "u", "expected"), RFC7748_VECTORS)
def test_x25519_matches_the_rfc_7748_vectors(scalar: str, u: str, expected: str) -> None:
    assert x25519(bytes.fromhex(scalar), bytes.fromhex(u)).hex() == expected


def test_x25519_iterated_1000_times_matches_rfc_7748() -> None:
    k = u = (9).to_bytes(32, "little")
    results = []
    for _ in range(1000):
        k, u = x25519(k, u), k
        results.append(k.hex())
    assert results[0] == "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
    assert results[-1] == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


def test_public_keys_match_an_independent_x25519_implementation() -> None:
    for _ in range(25):
        private = os.urandom(32)
        reference = X25519PrivateKey.from_private_bytes(private).public_key()
        raw = reference.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert public_key(private) == raw


def test_generated_keys_are_clamped_like_wg_genkey() -> None:
    key = generate_private_key()
    assert key[0] & 7 == 0 and key[31] & 0x80 == 0 and key[31] & 0x40


def test_parse_key_names_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match=r"psk.*not base64"):
        parse_key("not base64!", "psk")
    with pytest.raises(ConfigError, match="32 bytes, got 3"):
        parse_key(base64.b64encode(b"abc").decode(), "psk")
    assert to_hex(parse_key(base64.b64encode(bytes(32)).decode(), "psk")) == "00" * 32


def test_absent_key_file_is_created_0400_base64_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "wgkey"
    old = os.umask(0)
    try:
        key = load_or_create_private_key(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    text = path.read_text()
    assert not text.endswith("\n") and base64.b64decode(text) == key


def test_present_key_file_is_reused_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "wgkey"
    first = load_or_create_private_key(path)
    assert load_or_create_private_key(path) == first


def test_key_file_with_bad_content_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wgkey"
    path.write_text("garbage")
    with pytest.raises(BackendError, match=rf"{path}.*delete the file"):
        load_or_create_private_key(path)
    assert path.read_text() == "garbage"  # never replaced silently: it is the node's identity


def test_world_readable_key_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "wgkey"
    path.write_text(base64.b64encode(generate_private_key()).decode())
    path.chmod(0o644)
    load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o400


def test_key_file_path_honours_wireguard_key_file() -> None:
    assert key_file_path({}) == Path("/run/flannel/wgkey")
    assert key_file_path({"WIREGUARD_KEY_FILE": "/x/k"}) == Path("/x/k")
