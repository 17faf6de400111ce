"""TLS with client certificates plus etcd username/password auth, against a real etcd."""

from __future__ import annotations

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


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[EtcdServer, Path]]:
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
        ),
    )
    server.start(timeout=30)
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
