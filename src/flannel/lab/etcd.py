"""A real etcd server process for the datastore tests, the benchmarks and the lab.

Started with a throwaway data dir on loopback (or inside a namespace via ``ip netns exec``), waited on
until ``etcdctl endpoint health`` answers, and ended by PID (SIGTERM, then SIGKILL) so nothing else on
a shared machine is touched.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

ETCD_BINARY = "/usr/bin/etcd"
ETCDCTL_BINARY = "/usr/bin/etcdctl"
# etcd 3.4 refuses to start elsewhere unless ETCD_UNSUPPORTED_ARCH names the (Go) architecture.
SUPPORTED_ARCHES = ("x86_64", "aarch64", "ppc64le")
ETCD_ARCH_NAMES = {"armv7l": "arm", "i686": "386", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class EtcdTLS:
    """Server TLS material; clients must then present a certificate signed by ``ca``."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path | None = None
    client_key: Path | None = None
    client_cert_auth: bool = True
    """False: TLS with server verification only (clients need no certificate)."""


class EtcdServer:
    """One etcd member; ``endpoint`` is its client URL.

    Alone it is a single-member cluster. For a multi-member cluster give every member its own
    ``name`` and the same ``initial_cluster`` (``name=peer_url,...``), ``spawn`` them all, then
    ``wait_healthy`` on each (a member is healthy only once a quorum has formed).
    """

    def __init__(
        self,
        data_dir: Path,
        client_url: str,
        peer_url: str,
        netns: str | None = None,
        tls: EtcdTLS | None = None,
        name: str = "pfa",
        initial_cluster: str | None = None,
    ) -> None:
        self.name = name
        self.initial_cluster = initial_cluster or f"{name}={peer_url}"
        self.data_dir = Path(data_dir)
        self.client_url = client_url
        self.peer_url = peer_url
        self.netns = netns
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.auth: tuple[str, str] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def pid(self) -> int | None:
        """PID of the etcd process (or of ``ip netns exec``, which execs etcd in place)."""
        return None if self.proc is None else self.proc.pid

    @property
    def endpoint(self) -> str:
        """The client URL to hand to clients (``--etcd-endpoints``)."""
        return self.client_url

    def _wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def _server_argv(self) -> list[str]:
        argv = [
            ETCD_BINARY,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--log-level=warn",
            "--logger=zap",
        ]
        if self.tls is not None:
            argv += [
                f"--cert-file={self.tls.cert}",
                f"--key-file={self.tls.key}",
            ]
            if self.tls.client_cert_auth:  # this etcd fails TLS for cert-less clients with a CA set
                argv += [f"--trusted-ca-file={self.tls.ca}", "--client-cert-auth"]
        return self._wrap(argv)

    def start(self, timeout: float = 30) -> None:
        """Spawn etcd and wait until it reports healthy; raises RuntimeError with its log tail."""
        self.spawn()
        self.wait_healthy(timeout)

    def spawn(self) -> None:
        """Start the etcd process (recorded by PID) without waiting for it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        machine = platform.machine()
        if machine not in SUPPORTED_ARCHES:
            env.setdefault("ETCD_UNSUPPORTED_ARCH", ETCD_ARCH_NAMES.get(machine, machine))
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self._server_argv(), stdout=log, stderr=log, env=env, start_new_session=True
            )
        finally:
            log.close()
        logger.info("started etcd pid %s at %s", self.proc.pid, self.client_url)

    def wait_healthy(self, timeout: float = 30) -> None:
        """Wait until ``etcdctl endpoint health`` answers; stop and raise RuntimeError if not."""
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self._log_tail()}")
            if self._healthy():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"etcd at {self.client_url} not healthy in {timeout}s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "<no log>"

    def etcdctl_argv(self, *args: str) -> list[str]:
        """An etcdctl command line (API v3) against this server, with its TLS and auth."""
        argv = [ETCDCTL_BINARY, f"--endpoints={self.client_url}", "--dial-timeout=2s"]
        if self.tls is not None:
            argv.append(f"--cacert={self.tls.ca}")
            if self.tls.client_cert is not None and self.tls.client_key is not None:
                argv += [f"--cert={self.tls.client_cert}", f"--key={self.tls.client_key}"]
        if self.auth is not None:
            argv.append(f"--user={self.auth[0]}:{self.auth[1]}")
        return self._wrap([*argv, *args])

    def etcdctl(self, *args: str, check: bool = True, timeout: float = 15) -> str:
        """Run etcdctl and return its stdout; raises RuntimeError naming the command on failure."""
        result = subprocess.run(
            self.etcdctl_argv(*args),
            capture_output=True,
            text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def _healthy(self) -> bool:
        try:
            self.etcdctl("endpoint", "health", timeout=5)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return True

    def enable_auth(self, user: str, password: str) -> None:
        """Create ``root`` and ``user`` (role with read-write on every key) and turn auth on."""
        self.etcdctl("user", "add", f"root:{password}")
        self.etcdctl("user", "add", f"{user}:{password}")
        self.etcdctl("role", "add", "flannel")
        self.etcdctl("role", "grant-permission", "flannel", "--prefix=true", "readwrite", "/")
        self.etcdctl("user", "grant-role", user, "flannel")
        self.etcdctl("auth", "enable")
        self.auth = ("root", password)

    def freeze(self) -> None:
        """SIGSTOP the member: a hung etcd (TCP stays up, nothing answers, no RST)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen member (harmless when it is running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 10) -> None:
        """End etcd by its PID: SIGCONT (if frozen), SIGTERM, then SIGKILL after ``timeout`` s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> EtcdServer:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
