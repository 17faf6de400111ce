"""Where the Kubernetes API is and how flanneld authenticates to it (client-go's
``BuildConfigFromFlags``), without lightkube: its import alone (httpx and friends) cost ~12 MiB.

- ``--kube-api-url`` and ``--kubeconfig-file`` both empty: the in-cluster service account
  (``KUBERNETES_SERVICE_HOST``/``_PORT``, the token file re-read as the kubelet rotates it, the
  cluster CA from ``ca.crt``);
- only the URL: that server, no credentials;
- a kubeconfig: its current context (the URL, when given, overrides the cluster's server).

Kubeconfig support is what client-go users put in one for a daemon: ``server``,
``certificate-authority(-data)``, ``insecure-skip-tls-verify``, ``tls-server-name``; users with
``token``, ``tokenFile``, ``client-certificate(-data)``/``client-key(-data)``, ``username``/
``password`` or an ``exec`` credential plugin (client.authentication.k8s.io v1, v1beta1, v1alpha1).
Relative file paths are relative to the kubeconfig, as in client-go. PyYAML is imported only when a
kubeconfig is read. Every problem is a DatastoreError naming the file or variable and what to pass.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from flannel.errors import DatastoreError
from flannel.subnet.kube_http import Authorize, Endpoint, HttpClient

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_FILE_PERIOD = 60.0
"""client-go re-reads a token file every minute (kubelet rotates projected tokens)."""
EXEC_VERSIONS = (
    "client.authentication.k8s.io/v1",
    "client.authentication.k8s.io/v1beta1",
    "client.authentication.k8s.io/v1alpha1",
)
FLAG_HINT = (
    "not running in a pod (no service account token or KUBERNETES_SERVICE_HOST)? "
    "pass --kube-api-url and/or --kubeconfig-file"
)


class _Named(msgspec.Struct):
    name: str = ""


class ExecEnv(msgspec.Struct):
    """One ``exec.env`` entry."""

    name: str
    value: str


class ExecConfig(msgspec.Struct):
    """A kubeconfig user's ``exec`` credential plugin."""

    command: str
    apiVersion: str = ""
    args: list[str] | None = None
    env: list[ExecEnv] | None = None


class ClusterConfig(msgspec.Struct, rename="kebab"):
    """A kubeconfig ``cluster`` (kebab-case keys, as kubectl writes them)."""

    server: str = ""
    certificate_authority: str | None = None
    certificate_authority_data: str | None = None
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None


class UserConfig(msgspec.Struct, rename="kebab"):
    """A kubeconfig ``user``."""

    token: str | None = None
    tokenFile: str | None = msgspec.field(default=None, name="tokenFile")
    client_certificate: str | None = None
    client_certificate_data: str | None = None
    client_key: str | None = None
    client_key_data: str | None = None
    username: str | None = None
    password: str | None = None
    exec: ExecConfig | None = None
    auth_provider: dict[str, Any] | None = None

    @property
    def token_file(self) -> str | None:
        return self.tokenFile


class _NamedCluster(_Named):
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)


class _NamedUser(_Named):
    user: UserConfig = msgspec.field(default_factory=UserConfig)


class _Context(msgspec.Struct):
    cluster: str = ""
    user: str = ""


class _NamedContext(_Named):
    context: _Context = msgspec.field(default_factory=_Context)


class _KubeConfigFile(msgspec.Struct, rename="kebab"):
    clusters: list[_NamedCluster] | None = None  # kubectl writes ``users: null``
    users: list[_NamedUser] | None = None
    contexts: list[_NamedContext] | None = None
    current_context: str | None = None


@dataclass(frozen=True)
class ApiConfig:
    """One resolved connection: the cluster, the user, and the directory relative paths are in."""

    cluster: ClusterConfig
    user: UserConfig = field(default_factory=UserConfig)
    base_dir: Path | None = None
    source: str = "--kube-api-url"

    def path(self, name: str) -> str:
        """A file named in the config, relative to the kubeconfig's directory."""
        if self.base_dir is None or os.path.isabs(name):
            return name
        return str(self.base_dir / name)


def client_config(url: str, kubeconfig: str, env: Mapping[str, str] | None = None) -> ApiConfig:
    """The connection for flanneld's flags (raises DatastoreError saying what to pass)."""
    if kubeconfig:
        config = load_kubeconfig(kubeconfig)
        if url:
            config = replace(config, cluster=msgspec.structs.replace(config.cluster, server=url))
        return config
    if url:
        return ApiConfig(ClusterConfig(server=url))
    return in_cluster_config(os.environ if env is None else env)


def in_cluster_config(env: Mapping[str, str], account: Path = SERVICE_ACCOUNT) -> ApiConfig:
    """The pod's service account (what the DaemonSet runs with)."""
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    token = account / "token"
    if not host or not port or not token.is_file():
        missing = "KUBERNETES_SERVICE_HOST/PORT" if not host or not port else str(token)
        raise DatastoreError(f"cannot configure the Kubernetes client: no {missing}; {FLAG_HINT}")
    host = f"[{host}]" if ":" in host else host
    cluster = ClusterConfig(server=f"https://{host}:{port}")
    if (account / "ca.crt").is_file():
        cluster.certificate_authority = str(account / "ca.crt")
    return ApiConfig(cluster, UserConfig(tokenFile=str(token)), source="the service account")


def load_kubeconfig(path: str) -> ApiConfig:
    """The current context of a kubeconfig file."""
    import yaml  # type: ignore[import-untyped]  # only here: in-cluster never loads PyYAML

    where = f"kubeconfig {path}"
    try:
        text = Path(path).expanduser().read_text()
        raw = yaml.safe_load(text)
        parsed = msgspec.convert(raw, _KubeConfigFile, strict=False)
    except OSError as exc:
        raise DatastoreError(f"cannot read {where}: {exc}; {FLAG_HINT}") from exc
    except (yaml.YAMLError, msgspec.ValidationError) as exc:
        raise DatastoreError(f"{where} is not a valid kubeconfig: {exc}") from exc
    if not parsed.current_context:
        raise DatastoreError(f"{where} has no current context (kubectl config use-context …)")
    contexts = {c.name: c.context for c in parsed.contexts or ()}
    context = contexts.get(parsed.current_context)
    if context is None:
        raise DatastoreError(f"{where}: context {parsed.current_context!r} not found")
    clusters = {c.name: c.cluster for c in parsed.clusters or ()}
    cluster = clusters.get(context.cluster)
    if cluster is None:
        raise DatastoreError(f"{where}: cluster {context.cluster!r} not found")
    users = {u.name: u.user for u in parsed.users or ()}
    user = users.get(context.user) if context.user else UserConfig()
    if user is None:
        raise DatastoreError(f"{where}: user {context.user!r} not found")
    if user.auth_provider is not None:
        raise DatastoreError(f"{where}: auth-provider is not supported (use an exec plugin)")
    if user.exec is not None and user.exec.apiVersion not in EXEC_VERSIONS:
        raise DatastoreError(
            f"{where}: exec plugin apiVersion {user.exec.apiVersion!r} is not one of "
            f"{', '.join(EXEC_VERSIONS)}"
        )
    base = Path(path).expanduser().resolve().parent
    return ApiConfig(cluster, user, base_dir=base, source=where)


def _pem(data: str, what: str, source: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DatastoreError(f"{source}: {what} is not base64: {exc}") from exc


def ssl_context(config: ApiConfig) -> ssl.SSLContext:
    """Server verification (the cluster CA, else the system store; or none when insecure) and
    the user's client certificate."""
    cluster, source = config.cluster, config.source
    try:
        if cluster.insecure_skip_tls_verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif cluster.certificate_authority_data:
            pem = _pem(cluster.certificate_authority_data, "certificate-authority-data", source)
            ctx = ssl.create_default_context(cadata=pem.decode("ascii", "replace"))
        elif cluster.certificate_authority:
            ctx = ssl.create_default_context(cafile=config.path(cluster.certificate_authority))
        else:
            ctx = ssl.create_default_context()
        _load_client_cert(ctx, config)
    except (ssl.SSLError, OSError) as exc:
        raise DatastoreError(f"cannot set up TLS for {cluster.server} ({source}): {exc}") from exc
    return ctx


def _load_client_cert(ctx: ssl.SSLContext, config: ApiConfig) -> None:
    user, source = config.user, config.source
    if user.client_certificate_data or user.client_key_data:
        cert = _pem(user.client_certificate_data or "", "client-certificate-data", source)
        key = _pem(user.client_key_data or "", "client-key-data", source)
        # ssl loads a chain only from a file: a private one, removed at once.
        with tempfile.NamedTemporaryFile(prefix="flannel-kube-", suffix=".pem") as tmp:
            tmp.write(cert + b"\n" + key)
            tmp.flush()
            ctx.load_cert_chain(tmp.name)
    elif user.client_certificate:
        key_file = config.path(user.client_key) if user.client_key else None
        ctx.load_cert_chain(config.path(user.client_certificate), key_file)


class _TokenFile:
    """A bearer token file, re-read every minute and after a 401 (kubelet rotates it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._value: str | None = None
        self._read_at = 0.0

    async def __call__(self, refresh: bool) -> str | None:
        now = time.monotonic()
        if refresh or self._value is None or now - self._read_at >= TOKEN_FILE_PERIOD:
            try:
                token = Path(self.path).read_text().strip()
            except OSError as exc:
                raise DatastoreError(f"cannot read the token file {self.path}: {exc}") from exc
            self._value, self._read_at = f"Bearer {token}", now
        return self._value


class _ExecPlugin:
    """An exec credential plugin, run again when its token expires or the server says 401."""

    def __init__(self, spec: ExecConfig, source: str) -> None:
        self.spec = spec
        self.source = source
        self._value: str | None = None
        self._expires: datetime | None = None

    async def __call__(self, refresh: bool) -> str | None:
        expired = self._expires is not None and datetime.now(self._expires.tzinfo) >= self._expires
        if self._value is None or refresh or expired:
            self._value, self._expires = await self._run()
        return self._value

    async def _run(self) -> tuple[str, datetime | None]:
        spec = self.spec
        env = dict(os.environ)
        env.update((e.name, e.value) for e in spec.env or ())
        info = {"apiVersion": spec.apiVersion, "kind": "ExecCredential"}
        env["KUBERNETES_EXEC_INFO"] = json.dumps({**info, "spec": {"interactive": False}})
        what = f"the exec credential plugin {spec.command!r} ({self.source})"
        try:
            proc = await asyncio.create_subprocess_exec(
                spec.command,
                *(spec.args or ()),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
        except OSError as exc:
            raise DatastoreError(f"cannot run {what}: {exc}") from exc
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip()[-500:]
            raise DatastoreError(f"{what} exited with {proc.returncode}: {tail}")
        try:
            status = json.loads(out)["status"]
            token = status["token"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DatastoreError(f"{what} returned no status.token: {exc!r}") from exc
        expires = status.get("expirationTimestamp")
        when = datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None
        return f"Bearer {token}", when


def authorizer(config: ApiConfig) -> Authorize:
    """The Authorization header source for a user (token, token file, exec, basic, none)."""
    user = config.user
    if user.token_file:
        return _TokenFile(config.path(user.token_file))
    if user.token:
        value = f"Bearer {user.token}"

        async def bearer(_refresh: bool) -> str | None:
            return value

        return bearer
    if user.exec is not None:
        return _ExecPlugin(user.exec, config.source)
    if user.username and user.password:
        basic = base64.b64encode(f"{user.username}:{user.password}".encode()).decode()

        async def basic_auth(_refresh: bool) -> str | None:
            return f"Basic {basic}"

        return basic_auth

    async def anonymous(_refresh: bool) -> str | None:
        return None

    return anonymous


def make_http_client(config: ApiConfig, *, timeout: float = 10.0) -> HttpClient:
    """An HTTP client for ``config`` (DatastoreError naming a bad server URL or TLS file)."""
    try:
        endpoint = Endpoint.parse(config.cluster.server)
    except ValueError as exc:
        raise DatastoreError(f"{exc} ({config.source}); {FLAG_HINT}") from exc
    context = ssl_context(config) if endpoint.scheme == "https" else None
    return HttpClient(
        endpoint,
        ssl_context=context,
        server_hostname=config.cluster.tls_server_name,
        authorize=authorizer(config),
        timeout=timeout,
    )
