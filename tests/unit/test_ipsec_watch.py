"""The ipsec-watch runtime: a charon that lost its connections gets a repair pass; per-peer SA
state reaches /metrics as valid Prometheus text."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from flannel.backend.ipsec.watch import SaWatch
from flannel.dataplane.fake import RecordingKernel
from flannel.dataplane.ipsecconn import IpsecConn, SaStatus
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.errors import KernelError
from flannel.metrics import render

CONN = IpsecConn("192.168.1.1-10.5.1.0/24-10.5.2.0/24-192.168.1.2", "192.168.1.1", "192.168.1.2")


class FakeCharon:
    def __init__(self, names: set[str], status: dict[str, SaStatus]) -> None:
        self.names, self.status, self.down = names, status, False

    def connection_names(self) -> set[str]:
        if self.down:
            raise KernelError("charon's VICI socket: connection refused")
        return self.names

    def sa_status(self) -> dict[str, SaStatus]:
        return self.status


async def synced_reconciler() -> Reconciler:
    rec = Reconciler(RecordingKernel([]), Scope(frozenset(), ("10.5.0.0/16",)))
    rec.set_group("peer", [CONN])
    await rec.reconcile_once(full=True)
    return rec


async def test_a_charon_without_the_desired_connections_triggers_a_repair_pass() -> None:
    rec = await synced_reconciler()
    charon = FakeCharon(set(), {})
    watch = SaWatch(rec, charon)  # type: ignore[arg-type]
    before = rec.generation
    await watch.check()
    assert watch.drift_found == 1 and rec.generation > before
    charon.names = {CONN.name}
    await watch.check()
    assert watch.drift_found == 1  # matches now: no more passes asked for
    charon.down = True
    await watch.check()  # charon restarting: no crash, status forgotten
    assert watch.status == {} and watch.drift_found == 1


async def test_peer_status_and_metrics_name_every_desired_connection() -> None:
    rec = await synced_reconciler()
    up = SaStatus(CONN.name, "ESTABLISHED", "INSTALLED", 10, 20, 1, 2, 3000, 5)
    watch = SaWatch(rec, FakeCharon({CONN.name}, {CONN.name: up}))  # type: ignore[arg-type]
    await watch.check()
    assert watch.peer_status() == [up]
    text = render(watch.metric_families())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    established = families["flannel_ipsec_peer_established"].samples
    assert [(s.labels["peer"], s.value) for s in established] == [("192.168.1.2", 1.0)]
    assert families["flannel_ipsec_peer_rekey_seconds"].samples[0].value == 3000
    sent = families["flannel_ipsec_peer_transmit_bytes"].samples  # the parser strips _total
    assert sent[0].value == 20
