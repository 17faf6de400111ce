"""Support-bundle redaction: every secret shape flannel meets goes, everything diagnostic stays."""

from __future__ import annotations

import base64
import json

import pytest

from flannel.model.redact import MARK, Redactor, encodings, is_secret_name

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
KEY_HEX = KEY.hex()
PUB_HEX = bytes(range(100, 132)).hex()


@pytest.mark.parametrize(
    "name",
    [
        "PSK",
        "psk",
        "etcd-password",
        "etcd_password",
        "PrivateKey",
        "private_key",
        "preshared_key",
        "token",
        "client-key-data",
        "secret",
        "Password",
        "bearerToken",
        "etcd-key",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "PublicKey",
        "public_key",
        "etcd-keyfile",
        "etcd_keyfile",
        "keyfile",
        "VtepMAC",
        "Network",
        "kube-subnet-manager",
        "SubnetLen",
        "persistent_keepalive_interval",
        "key_path",
        "type",
    ],
)
def test_kept_names(name: str) -> None:
    assert not is_secret_name(name)


def test_a_uapi_dump_loses_private_and_preshared_keys_but_keeps_the_rest() -> None:
    dump = (
        f"private_key={KEY_HEX}\nlisten_port=51820\npublic_key={PUB_HEX}\n"
        f"preshared_key={'ab' * 32}\nendpoint=192.168.100.12:51820\nallowed_ip=10.5.9.0/24\n"
        "rx_bytes=100\nerrno=0\n"
    )
    out = Redactor().text(dump)
    assert KEY_HEX not in out and "ab" * 32 not in out
    assert f"public_key={PUB_HEX}" in out and "endpoint=192.168.100.12:51820" in out
    assert out.count(MARK) == 2


def test_a_key_seen_in_hex_is_also_caught_in_base64_elsewhere() -> None:
    redactor = Redactor()
    redactor.text(f"private_key={KEY_HEX}\n")
    assert redactor.text(f"the key is {KEY_B64} today") == f"the key is {MARK} today"


def test_known_secrets_are_replaced_in_every_encoding() -> None:
    redactor = Redactor([KEY_B64, "hunter2-password"])
    text = f"a {KEY_B64} b {KEY_HEX} c hunter2-password d"
    assert redactor.text(text) == f"a {MARK} b {MARK} c {MARK} d"
    assert redactor.count == 3
    assert KEY_HEX in encodings(KEY_B64) and KEY_B64 in encodings(KEY_HEX)


def test_short_known_values_are_not_used_by_value() -> None:
    assert Redactor(["ab"]).text("abc ab") == "abc ab"


def test_json_fields_named_like_secrets_are_redacted_structurally() -> None:
    conf = {
        "Network": "10.5.0.0/16",
        "Backend": {"Type": "wireguard", "PSK": KEY_B64, "PublicKey": "pub", "ListenPort": 51820},
    }
    redactor = Redactor()
    out = json.loads(redactor.json_text(json.dumps(conf)))
    assert out["Backend"]["PSK"] == MARK
    assert out["Backend"]["PublicKey"] == "pub" and out["Network"] == "10.5.0.0/16"
    assert redactor.text(f"later: {KEY_HEX}") == f"later: {MARK}"  # learnt from the JSON


def test_json_inside_text_lines_is_redacted() -> None:
    line = 'value {"Type":"ipsec","PSK":"0123456789abcdef0123456789","UDPEncap":false}'
    out = Redactor().text(line)
    assert "0123456789abcdef" not in out and '"UDPEncap":false' in out


def test_pem_private_keys_go_and_certificates_stay() -> None:
    pem = (
        "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n"
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI\nsecretbits\n-----END EC PRIVATE KEY-----\n"
    )
    out = Redactor().text(pem)
    assert "MIIBcert" in out and "secretbits" not in out and "MHcCAQEEI" not in out
    assert "-----BEGIN EC PRIVATE KEY-----" in out


def test_xfrm_state_keys_go() -> None:
    state = (
        "src 192.168.100.11 dst 192.168.100.12\n\tproto esp spi 0xc1a2 reqid 11 mode tunnel\n"
        "\tauth-trunc hmac(sha256) 0x00112233445566778899aabbccddeeff 128\n"
        "\tenc cbc(aes) 0xffeeddccbbaa99887766554433221100\n"
        "\taead rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f10 128\n"
    )
    out = Redactor().text(state)
    for secret in ("00112233445566778899", "ffeeddccbbaa", "0102030405060708090a"):
        assert secret not in out
    assert "spi 0xc1a2 reqid 11" in out and "hmac(sha256)" in out


def test_tokens_passwords_in_urls_and_flags_go() -> None:
    text = (
        "Authorization: Bearer eyJhbGciOi.abc-def_ghi\n"
        "    token: abcdef123456\n"
        "client-key-data: LS0tLS1CRUdJTi\n"
        "endpoint https://root:s3cr3tpw@10.0.0.1:2379/v3\n"
        "flanneld --etcd-password=topsecret1 --etcd-keyfile=/etc/k.pem --etcd-username root\n"
        "Settings(etcd_password='pw-in-repr', iface=('eth0',))\n"
        "FLANNEL_SUBNET=10.5.7.1/24\n"
    )
    out = Redactor().text(text)
    for secret in ("eyJhbGciOi", "abcdef123456", "LS0tLS1CRUdJTi", "s3cr3tpw", "topsecret1"):
        assert secret not in out, secret
    assert "pw-in-repr" not in out
    for kept in ("--etcd-keyfile=/etc/k.pem", "--etcd-username root", "FLANNEL_SUBNET=10.5.7.1/24"):
        assert kept in out
    assert "https://root:<redacted>@10.0.0.1:2379/v3" in out


def test_wg_quick_style_config_lines_go() -> None:
    out = Redactor().text(f"[Interface]\nPrivateKey = {KEY_B64}\nListenPort = 51820\n")
    assert KEY_B64 not in out and "ListenPort = 51820" in out


def test_diagnostic_dumps_pass_unchanged() -> None:
    text = (
        "3: flannel.1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN\n"
        "    vxlan id 1 local 192.168.100.11 dev eth0 srcport 0 0 dstport 8472 nolearning\n"
        "10.5.65.0/24 via 10.5.65.0 dev flannel.1 proto 86 onlink\n"
        '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq"\n'
        '{"PublicIP":"192.168.100.11","BackendType":"vxlan","BackendData":{"VNI":1,'
        '"VtepMAC":"6a:4f:e3:24:df:5b"}}\n'
        "table ip flannel-ipv4 {\n\tchain postrtg {\n\t\tmeta mark 0x4000 return\n"
    )
    redactor = Redactor()
    assert redactor.text(text) == text
    assert redactor.count == 0
