"""flannel's own Kubernetes client: TLS, credentials and HTTP/1.1 framing against real sockets.

The API double speaks plain HTTP, so TLS is proven through a TLS-terminating proxy in front of it
(real handshakes with a CA, server and client certificates made here); framing corner cases
(gzip, chunks, a pooled connection the server closed) against a tiny scripted server.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import gzip
import ipaddress
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kube_helpers import Factory

from flannel.errors import DatastoreError, GoneError
from flannel.lab.apiserver import KubeApiDouble
from flannel.model.settings import Settings
from flannel.subnet import kube_config
from flannel.subnet.kube_client import KubeApi, make_client

pytestmark = pytest.mark.kube


# ------------------------------------------------------------------ certificates
@dataclass
class Pki:
    """A CA, a server certificate for 127.0.0.1 / kube.test, and a client certificate (PEM)."""

    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("kube.test"),
    ]
    return Pki(
        ca=_cert("test-ca", ca_key, None, ca=True),
        server_cert=_cert("kube-apiserver", server_key, ("test-ca", ca_key), sans=sans),
        server_key=_key_pem(server_key),
        client_cert=_cert("system:node:flannel", client_key, ("test-ca", ca_key)),
        client_key=_key_pem(client_key),
    )


# ------------------------------------------------------------------ a TLS front for the double
@dataclass
class TlsFront:
    """Terminates TLS (client certificate required) and pipes to the double; keeps what the
    client sent, decrypted, and the client certificates' subjects."""

    url: str
    seen: bytearray = field(default_factory=bytearray)
    clients: list[str] = field(default_factory=list)


@pytest.fixture
async def tls_front(api: KubeApiDouble, pki: Pki, tmp_path: Path) -> AsyncIterator[TlsFront]:
    (tmp_path / "server.pem").write_bytes(pki.server_cert + pki.server_key)
    (tmp_path / "ca.pem").write_bytes(pki.ca)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "server.pem")
    ctx.load_verify_locations(tmp_path / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    tasks: set[asyncio.Task[None]] = set()
    front = TlsFront(url="")

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
        try:
            while data := await src.read(65536):
                if keep:
                    front.seen.extend(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            dst.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        front.clients.extend(
            v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"
        )
        up_reader, up_writer = await asyncio.open_connection(api.host, api.port)
        for coro in (pipe(reader, up_writer, True), pipe(up_reader, writer, False)):
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
    front.url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield front
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(path: Path, cluster: dict[str, object], user: dict[str, object]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


# ------------------------------------------------------------------ TLS and credentials
async def test_a_kubeconfig_with_ca_and_client_certificate_data_and_a_token_syncs_over_tls(
    api: KubeApiDouble, tls_front: TlsFront, pki: Pki, manager_factory: Factory, tmp_path: Path
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    path = kubeconfig(
        tmp_path / "kubeconfig",
        {"server": tls_front.url, "certificate-authority-data": b64(pki.ca)},
        {
            "client-certificate-data": b64(pki.client_cert),
            "client-key-data": b64(pki.client_key),
            "token": "secret-token",
        },
    )
    manager = await manager_factory(kube_api_url="", kubeconfig_file=str(path))
    assert manager.reflector is not None and manager.reflector.synced.is_set()
    assert tls_front.clients and set(tls_front.clients) == {"system:node:flannel"}
    assert b"\r\nAuthorization: Bearer secret-token\r\n" in tls_front.seen


async def test_relative_certificate_files_are_read_beside_the_kubeconfig_and_tls_server_name_is_used(
    api: KubeApiDouble, tls_front: TlsFront, pki: Pki, tmp_path: Path
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    for name, data in (("ca.crt", pki.ca), ("c.crt", pki.client_cert), ("c.key", pki.client_key)):
        (tmp_path / name).write_bytes(data)
    path = kubeconfig(
        tmp_path / "kubeconfig",
        {
            "server": tls_front.url,
            "certificate-authority": "ca.crt",
            "tls-server-name": "kube.test",
        },
        {"client-certificate": "c.crt", "client-key": "c.key"},
    )
    kube = KubeApi(make_client(Settings(kubeconfig_file=str(path))))
    try:
        _, nodes = await kube.list_nodes()
    finally:
        await kube.close()
    assert [n.metadata.name for n in nodes] == ["node-a"]
    assert b"\r\nAuthorization:" not in tls_front.seen  # no user credentials: none sent


async def test_a_server_certificate_from_another_ca_is_refused_naming_the_url(
    tls_front: TlsFront, pki: Pki, tmp_path: Path
) -> None:
    other_ca = _cert("other-ca", ec.generate_private_key(ec.SECP256R1()), None, ca=True)
    path = kubeconfig(
        tmp_path / "kubeconfig",
        {"server": tls_front.url, "certificate-authority-data": b64(other_ca)},
        {"client-certificate-data": b64(pki.client_cert), "client-key-data": b64(pki.client_key)},
    )
    kube = KubeApi(make_client(Settings(kubeconfig_file=str(path))))
    try:
        with pytest.raises(
            DatastoreError,
            match=f"cannot reach the Kubernetes API at {tls_front.url}.*CERTIFICATE_VERIFY_FAILED",
        ):
            await kube.get_node("node-a")
    finally:
        await kube.close()


def test_malformed_certificate_data_names_the_kubeconfig_and_the_field(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "kubeconfig",
        {"server": "https://127.0.0.1:6443", "certificate-authority-data": "%%% not base64"},
        {},
    )
    with pytest.raises(
        DatastoreError, match=r"kubeconfig .*kubeconfig: certificate-authority-data is not base64"
    ):
        make_client(Settings(kubeconfig_file=str(path)))


def test_an_unsupported_exec_api_version_and_an_auth_provider_are_refused(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "a", {"server": "https://h:6443"}, {"exec": {"command": "x", "apiVersion": "v9"}}
    )
    with pytest.raises(DatastoreError, match="exec plugin apiVersion 'v9' is not one of"):
        make_client(Settings(kubeconfig_file=str(path)))
    path = kubeconfig(
        tmp_path / "b", {"server": "https://h:6443"}, {"auth-provider": {"name": "gcp"}}
    )
    with pytest.raises(DatastoreError, match="auth-provider is not supported"):
        make_client(Settings(kubeconfig_file=str(path)))


async def test_an_exec_plugin_token_is_sent_and_the_plugin_gets_its_env(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, os\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "assert info['spec'] == {'interactive': False}, info\n"
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential',\n"
        "    'status': {'token': 'tok-' + os.environ['EXTRA']}}))\n"
    )
    path = kubeconfig(
        tmp_path / "kubeconfig",
        {"server": "https://127.0.0.1:6443"},
        {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": sys.executable,
                "args": [str(plugin)],
                "env": [{"name": "EXTRA", "value": "42"}],
            }
        },
    )
    authorize = kube_config.authorizer(kube_config.load_kubeconfig(str(path)))
    assert await authorize(False) == "Bearer tok-42"


async def test_a_failing_exec_plugin_names_the_command_and_its_stderr(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "kubeconfig",
        {"server": "https://127.0.0.1:6443"},
        {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": sys.executable,
                "args": ["-c", "import sys; sys.exit('no credentials for you')"],
            }
        },
    )
    authorize = kube_config.authorizer(kube_config.load_kubeconfig(str(path)))
    with pytest.raises(DatastoreError, match="exited with 1: no credentials for you"):
        await authorize(False)


async def test_the_service_account_is_used_in_a_pod_and_its_rotated_token_is_reread(
    tmp_path: Path,
) -> None:
    (tmp_path / "token").write_text("first\n")
    (tmp_path / "ca.crt").write_text("")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    config = kube_config.in_cluster_config(env, account=tmp_path)
    assert config.cluster.server == "https://[fd00::1]:443"
    assert config.cluster.certificate_authority == str(tmp_path / "ca.crt")
    authorize = kube_config.authorizer(config)
    assert await authorize(False) == "Bearer first"
    (tmp_path / "token").write_text("second\n")
    assert await authorize(False) == "Bearer first"  # cached for a minute, as client-go
    assert await authorize(True) == "Bearer second"  # after a 401: read again


def test_outside_a_pod_without_flags_the_error_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DatastoreError, match=r"no KUBERNETES_SERVICE_HOST/PORT.*--kube-api-url"):
        kube_config.in_cluster_config({}, account=tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(DatastoreError, match=f"no {tmp_path / 'token'}"):
        kube_config.in_cluster_config(env, account=tmp_path)


# ------------------------------------------------------------------ HTTP/1.1 framing
Script = Callable[[int, bytes], bytes | tuple[bytes] | None]
"""(connection number, request head) -> raw answer (in a 1-tuple: then close the connection), or
None to close without answering."""


Launch = Callable[[Script], Awaitable[str]]


@pytest.fixture
async def scripted() -> AsyncIterator[Launch]:
    """Start servers that answer each request head with what the script returns."""
    servers: list[asyncio.Server] = []

    async def launch(script: Script) -> str:
        count = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            count += 1
            number = count
            try:
                while head := await reader.readuntil(b"\r\n\r\n"):
                    reply = script(number, head)
                    if reply is None:
                        break
                    writer.write(reply[0] if isinstance(reply, tuple) else reply)
                    await writer.drain()
                    if isinstance(reply, tuple):
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield launch
    for server in servers:
        server.close()


def answer(status: str, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", *headers]
    if not any(h.lower().startswith("transfer-encoding") for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


NODE = {"metadata": {"name": "node-a", "resourceVersion": "7"}, "spec": {"podCIDR": "10.1.0.0/24"}}


async def test_a_gzip_encoded_chunked_answer_is_decoded(scripted: Launch) -> None:
    body = gzip.compress(json.dumps(NODE).encode())
    url = await scripted(
        lambda n, head: answer(
            "200 OK",
            chunked(body, 7),
            "Content-Type: application/json",
            "Content-Encoding: gzip",
            "Transfer-Encoding: chunked",
        )
    )
    kube = KubeApi(make_client(Settings(kube_api_url=url)))
    try:
        node = await kube.get_node("node-a")
    finally:
        await kube.close()
    assert node.spec is not None and node.spec.podCIDR == "10.1.0.0/24"


async def test_a_pooled_connection_the_server_closed_is_retried_on_a_fresh_one(
    scripted: Launch,
) -> None:
    heads: list[tuple[int, bytes]] = []

    def script(conn: int, head: bytes) -> bytes | None:
        heads.append((conn, head))
        if conn == 1 and len(heads) > 1:
            return None  # the server dropped the idle keep-alive connection
        return answer("200 OK", json.dumps(NODE).encode(), "Content-Type: application/json")

    url = await scripted(script)
    kube = KubeApi(make_client(Settings(kube_api_url=url)))
    try:
        await kube.get_node("node-a")
        await kube.get_node("node-a")
    finally:
        await kube.close()
    assert [conn for conn, _ in heads] == [1, 1, 2]
    assert b"GET /api/v1/nodes/node-a HTTP/1.1\r\n" in heads[-1][1]


async def test_a_non_json_error_answer_names_the_http_status(scripted: Launch) -> None:
    url = await scripted(
        lambda n, head: answer("502 Bad Gateway", b"<html>proxy</html>", "Content-Type: text/html")
    )
    kube = KubeApi(make_client(Settings(kube_api_url=url)))
    try:
        with pytest.raises(
            DatastoreError, match=f'get nodes "node-a" failed at the Kubernetes API {url}: HTTP 502'
        ):
            await kube.get_node("node-a")
    finally:
        await kube.close()


async def test_a_body_cut_short_is_a_connection_error_naming_the_url(
    scripted: Launch,
) -> None:
    full = answer("200 OK", json.dumps(NODE).encode(), "Content-Type: application/json")
    url = await scripted(lambda n, head: (full[:-10],))
    kube = KubeApi(make_client(Settings(kube_api_url=url)))
    try:
        with pytest.raises(DatastoreError, match=f"cannot reach the Kubernetes API at {url}"):
            await asyncio.wait_for(kube.get_node("node-a"), 30)
    finally:
        await kube.close()


def test_kube_mode_loads_neither_lightkube_nor_httpx_nor_yaml() -> None:
    code = (
        "import sys, flannel.subnet.kube, flannel.daemon.main\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in\n"
        "       ('lightkube', 'httpx2', 'httpx', 'httpcore2', 'anyio', 'yaml')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_watch_events_split_across_chunks_are_reassembled_line_by_line(
    scripted: Launch,
) -> None:
    events = [
        {"type": "ADDED", "object": NODE},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}},
    ]
    stream = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    url = await scripted(
        lambda n, head: (
            answer(
                "200 OK",
                chunked(stream, 5),
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
            ),
        )
    )
    kube = KubeApi(make_client(Settings(kube_api_url=url)))
    seen: list[tuple[str, str]] = []
    try:
        with pytest.raises(GoneError, match=r"watch nodes at .*: too old"):
            async for kind, node in kube.watch_nodes("7"):
                seen.append((kind, node.metadata.resourceVersion))
    finally:
        await kube.close()
    assert seen == [("ADDED", "7"), ("BOOKMARK", "9")]
