"""TLS with client certificates plus etcd username/password auth, against a real etcd."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_helpers import CONFIG, PREFIX, attrs

from flannel.errors import DatastoreError
from flannel.lab.certs import generate_pki
from flannel.lab.etcd import EtcdServer, EtcdTLS
from flannel.subnet.etcd import EtcdSubnetManager

pytestmark = pytest.mark.etcd


def _tls_etcd(tmp_path: Path, *, client_cert_auth: bool) -> EtcdServer:
    pki = generate_pki(tmp_path / "pki")
    port = 23000 + secrets.randbelow(450) * 2
    server = EtcdServer(
        data_dir=tmp_path / "etcd",
        client_url=f"https://127.0.0.1:{port}",
        peer_url=f"http://127.0.0.1:{port + 1}",
        tls=EtcdTLS(
            ca=pki.ca,
            cert=pki.server_cert,
            key=pki.server_key,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
            client_cert_auth=client_cert_auth,
        ),
    )
    server.start(timeout=30)
    return server


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[EtcdServer, Path]]:
    server = _tls_etcd(tmp_path, client_cert_auth=True)
    try:
        server.enable_auth("flannel", "s3cret")
        server.etcdctl("put", f"{PREFIX}/config", CONFIG)
        yield server, tmp_path / "pki"
    finally:
        server.stop()


def _manager(server: EtcdServer, pki: Path, **kwargs: str) -> EtcdSubnetManager:
    options = {
        "keyfile": str(pki / "client-key.pem"),
        "certfile": str(pki / "client.pem"),
        "cafile": str(pki / "ca.pem"),
        "username": "flannel",
        "password": "s3cret",
        **kwargs,
    }
    return EtcdSubnetManager(endpoints=[server.endpoint], prefix=PREFIX, **options)


async def test_client_cert_and_password_get_a_lease(
    tls_etcd: tuple[EtcdServer, Path],
) -> None:
    server, pki = tls_etcd
    manager = _manager(server, pki)
    try:
        lease = await manager.acquire_lease(attrs("1.2.3.4"))
    finally:
        await manager.close()
    assert lease.subnet is not None
    key = f"{PREFIX}/subnets/{lease.subnet.network_address}-24"
    assert "1.2.3.4" in server.etcdctl("get", key)


async def test_wrong_password_is_a_datastore_error(tls_etcd: tuple[EtcdServer, Path]) -> None:
    server, pki = tls_etcd
    manager = _manager(server, pki, password="wrong")
    try:
        with pytest.raises(DatastoreError, match="authentication failed"):
            await manager.get_network_config()
    finally:
        await manager.close()


async def test_plaintext_client_cannot_talk_to_a_tls_etcd(
    tls_etcd: tuple[EtcdServer, Path],
) -> None:
    server, pki = tls_etcd
    manager = _manager(server, pki, keyfile="", certfile="")
    try:
        with pytest.raises(DatastoreError):
            await manager.get_network_config()
    finally:
        await manager.close()


@pytest.fixture
def server_tls_etcd(tmp_path: Path) -> Iterator[tuple[EtcdServer, Path]]:
    """TLS that verifies the server only: clients need no certificate (#19.5)."""
    server = _tls_etcd(tmp_path, client_cert_auth=False)
    try:
        server.etcdctl("put", f"{PREFIX}/config", CONFIG)
        yield server, tmp_path / "pki"
    finally:
        server.stop()


async def test_https_endpoint_without_client_cert_speaks_tls_verified_by_the_cafile(
    server_tls_etcd: tuple[EtcdServer, Path],
) -> None:
    """Before: no client certificate meant plaintext even to https://, and only "Socket closed"."""
    server, pki = server_tls_etcd
    manager = EtcdSubnetManager(
        endpoints=[server.endpoint], prefix=PREFIX, cafile=str(pki / "ca.pem")
    )
    try:
        config = await manager.get_network_config()
        assert str(config.network) == json.loads(CONFIG)["Network"]
    finally:
        await manager.close()


async def test_https_endpoint_without_cafile_verifies_against_the_system_store_and_fails_clearly(
    server_tls_etcd: tuple[EtcdServer, Path],
) -> None:
    server, _ = server_tls_etcd
    manager = EtcdSubnetManager(endpoints=[server.endpoint], prefix=PREFIX)
    try:
        with pytest.raises(DatastoreError) as failure:
            await manager.get_network_config()
        text = str(failure.value).lower()
        assert "ssl" in text or "certificate" in text or "handshake" in text, text
    finally:
        await manager.close()


@pytest.mark.parametrize(
    ("endpoints", "files", "expected"),
    [
        (["http://127.0.0.1:2379"], {"cafile": "/x/ca.pem"}, "plain http://"),
        (
            ["https://127.0.0.1:2379", "http://127.0.0.1:2381"],
            {},
            "mix http:// and https://",
        ),
    ],
)
def test_scheme_and_tls_files_must_agree(
    endpoints: list[str], files: dict[str, str], expected: str
) -> None:
    with pytest.raises(DatastoreError, match=expected):
        EtcdSubnetManager(endpoints=endpoints, prefix=PREFIX, **files)
