"""flannelctl doctor's pure checks, table-driven: a healthy vxlan node's snapshot reports nothing,
and each single fault put into it is named by exactly the check id (and severity) the README lists,
with the fix command that undoes it."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from flannel.dataplane.objects import Addr, Fdb, KernelObject, Link, Neigh, Route, VxlanParams
from flannel.doctor import findings as findings_mod
from flannel.doctor.findings import CATALOG, Report, Severity, render_json, render_table
from flannel.doctor.run import evaluate
from flannel.doctor.snapshot import (
    CniFacts,
    FileFact,
    HttpFact,
    IpsecFact,
    IptablesFacts,
    NftChainFact,
    NftFacts,
    NodeSnapshot,
    Paths,
    PeerProbe,
    ProbeSnapshot,
    Snapshot,
    StoreSnapshot,
    WgPeerFact,
)
from flannel.model.lease import Lease, LeaseAttrs

KEYS = "/coreos.com/network/subnets/"
OWN_MAC, PEER_MAC = "aa:aa:aa:aa:aa:01", "02:00:00:00:00:02"
CONF = {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}
CONFLIST = {
    "name": "cbr0",
    "cniVersion": "0.3.1",
    "plugins": [
        {
            "type": "flannel",
            "subnetFile": "/lab/subnet.env",
            "delegate": {"isDefaultGateway": True},
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
ENV = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
FWD = '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD'
MASQ = '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'


def lease(n: int, mac: str, *, ip: str = "", kind: str = "vxlan", created: int = 0) -> Lease:
    data = f'{{"VNI":1,"VtepMAC":"{mac}"}}' if kind == "vxlan" else None
    return Lease(
        subnet=IPv4Network(f"10.5.{n}.0/24"),
        attrs=LeaseAttrs(
            public_ip=IPv4Address(ip or f"192.168.100.{10 + n}"),
            backend_type=kind,
            backend_data=data,
        ),
        created=created or n,
        name=f"{KEYS}10.5.{n}.0-24",
    )


OWN, PEER = lease(1, OWN_MAC), lease(2, PEER_MAC)
KERNEL: tuple[KernelObject, ...] = (
    Link("eth0", kind="veth", mtu=1500, mac="ee:00:00:00:00:01"),
    Addr("eth0", "192.168.100.11", 24),
    Link("flannel.1", vxlan=VxlanParams(1, 8472, "192.168.100.11"), mtu=1450, mac=OWN_MAC),
    Addr("flannel.1", "10.5.1.0", 32),
    Link("cni0", kind="bridge", mtu=1450, mac="02:cc:00:00:00:01"),
    Addr("cni0", "10.5.1.1", 24),
    Neigh("flannel.1", "10.5.2.0", PEER_MAC),
    Fdb("flannel.1", PEER_MAC, "192.168.100.12"),
    Route("10.5.2.0/24", device="flannel.1", gateway="10.5.2.0", onlink=True),
    Route("10.5.1.0/24", device="cni0", protocol=2),
    Route("0.0.0.0/0", device="eth0", gateway="192.168.100.1", protocol=3),
)


def healthy() -> Snapshot:
    node = NodeSnapshot(
        paths=Paths(
            subnet_file="/lab/subnet.env", cni_conf_dir="/lab/net.d", cni_bin_dirs=("/lab/bin",)
        ),
        kernel=KERNEL,
        sysctls={"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"},
        modules={"vxlan": "loaded"},
        subnet_env=FileFact("/lab/subnet.env", ENV),
        cni=CniFacts(
            "/lab/net.d",
            (FileFact("/lab/net.d/10-flannel.conflist", json.dumps(CONFLIST)),),
            bin_dirs=("/lab/bin",),
            binaries=frozenset({"flannel", "bridge", "host-local", "portmap"}),
        ),
        iptables={
            4: IptablesFacts(
                4,
                True,
                policies={"filter/FORWARD": "ACCEPT", "nat/POSTROUTING": "ACCEPT"},
                chains=frozenset(
                    {
                        "filter/FORWARD",
                        "filter/FLANNEL-FWD",
                        "nat/POSTROUTING",
                        "nat/FLANNEL-POSTRTG",
                    }
                ),
                rules={"filter/FORWARD": (FWD,), "nat/POSTROUTING": (MASQ,)},
            ),
        },
        nft=NftFacts(True),
        health=(
            HttpFact("http://127.0.0.1:8081/healthz", 200, "ok"),
            HttpFact("http://127.0.0.1:8081/readyz", 200, "ok"),
        ),
    )
    store = StoreSnapshot(
        kind="etcd",
        where="http://192.168.100.1:2379",
        config_text=json.dumps(CONF),
        config_source="etcd key /coreos.com/network/config",
        leases=(OWN, PEER),
        delete_command="ETCDCTL_API=3 etcdctl --endpoints=http://192.168.100.1:2379 del {name}",
    )
    probe = PeerProbe(
        PEER.name, "192.168.100.12", "10.5.2.0/24", ("10.5.2.0", "10.5.2.1"), True, True, True, 1450
    )
    return Snapshot(node=node, store=store, probes=ProbeSnapshot((probe,)))


# ---- mutations: each puts one fault into the healthy snapshot


def _node(snap: Snapshot, **changes: object) -> Snapshot:
    return replace(snap, node=replace(snap.node, **changes))


def _store(snap: Snapshot, **changes: object) -> Snapshot:
    return replace(snap, store=replace(snap.store, **changes))


def _kernel(snap: Snapshot, drop: Callable[[KernelObject], bool] = lambda o: False,
            add: tuple[KernelObject, ...] = ()) -> Snapshot:  # fmt: skip
    return _node(snap, kernel=tuple(o for o in snap.node.kernel if not drop(o)) + add)


def _relink(snap: Snapshot, name: str, **changes: object) -> Snapshot:
    kernel = tuple(
        replace(o, **changes) if isinstance(o, Link) and o.name == name else o
        for o in snap.node.kernel
    )
    return _node(snap, kernel=kernel)


def _ipt(snap: Snapshot, **changes: object) -> Snapshot:
    return _node(snap, iptables={4: replace(snap.node.iptables[4], **changes)})


def _probe(snap: Snapshot, **changes: object) -> Snapshot:
    return replace(snap, probes=ProbeSnapshot((replace(snap.probes.peers[0], **changes),)))


def _cni(snap: Snapshot, **changes: object) -> Snapshot:
    return _node(snap, cni=replace(snap.node.cni, **changes))


def _conf(snap: Snapshot, conf: dict[str, object]) -> Snapshot:
    return _store(snap, config_text=json.dumps(conf))


FOREIGN = FileFact(
    "/lab/net.d/00-other.conflist", json.dumps({"name": "x", "plugins": [{"type": "bridge"}]})
)
FAKES = tuple(lease(n, f"02:00:00:00:01:{n:02x}", ip=f"192.0.2.{n}") for n in range(3, 256))

CASES: list[tuple[str, Callable[[Snapshot], Snapshot], str, Severity, str | None]] = [
    # (name, fault, id, severity, command the finding must carry)
    ("ip_forward off", lambda s: _node(s, sysctls={**s.node.sysctls, "net.ipv4.ip_forward": "0"}),
     "sysctl.ip-forward", Severity.ERROR, "sysctl -w net.ipv4.ip_forward=1"),
    ("br_netfilter not loaded", lambda s: _node(s, sysctls={"net.ipv4.ip_forward": "1"}),
     "sysctl.bridge-nf-call", Severity.INFO, None),
    ("vxlan module absent", lambda s: _node(_kernel(s, lambda o: o.device == "flannel.1"),
                                            modules={"vxlan": "missing"}),
     "kernel.module-missing", Severity.ERROR, "modprobe vxlan"),
    ("subnet.env missing", lambda s: _node(s, subnet_env=FileFact("/lab/subnet.env", None, "ENOENT")),
     "subnetenv.missing", Severity.ERROR, None),
    ("subnet.env garbage", lambda s: _node(s, subnet_env=FileFact("/lab/subnet.env", "x=1\n")),
     "subnetenv.invalid", Severity.ERROR, None),
    ("subnet.env out of date", lambda s: _node(s, subnet_env=FileFact("/lab/subnet.env",
                                                                      ENV.replace("10.5.1.1", "10.5.9.1"))),
     "subnetenv.stale", Severity.ERROR, "sed -i 's#^FLANNEL_SUBNET=.*#FLANNEL_SUBNET=10.5.1.1/24#' /lab/subnet.env"),
    ("subnet.env MTU", lambda s: _node(s, subnet_env=FileFact("/lab/subnet.env", ENV.replace("1450", "1500"))),
     "subnetenv.mtu", Severity.WARN, None),
    ("conflist missing", lambda s: _cni(s, files=()), "cni.conflist-missing", Severity.ERROR, None),
    ("conflist broken", lambda s: _cni(s, files=(FileFact("/lab/net.d/10-flannel.conflist", "{"),)),
     "cni.conflist-invalid", Severity.ERROR, None),
    ("foreign conflist first", lambda s: _cni(s, files=(FOREIGN, *s.node.cni.files)),
     "cni.conflist-shadowed", Severity.ERROR,
     "mv /lab/net.d/00-other.conflist /lab/net.d/00-other.conflist.disabled"),
    ("foreign conflist after", lambda s: _cni(s, files=(*s.node.cni.files, replace(FOREIGN, path="/lab/net.d/99-x.conf"))),
     "cni.foreign-conflist", Severity.WARN, None),
    ("bridge missing, found elsewhere", lambda s: _cni(s, binaries=frozenset({"flannel", "host-local", "portmap"}),
                                                      elsewhere={"bridge": "/usr/lib/cni/bridge"}),
     "cni.plugin-missing", Severity.ERROR, "cp /usr/lib/cni/bridge /lab/bin/bridge"),
    ("portmap missing nowhere", lambda s: _cni(s, binaries=frozenset({"flannel", "host-local", "bridge"})),
     "cni.plugin-missing", Severity.ERROR, None),
    ("conflist reads another subnet.env", lambda s: _node(s, paths=replace(s.node.paths, subnet_file="/run/flannel/subnet.env"),
                                                          subnet_env=replace(s.node.subnet_env, path="/run/flannel/subnet.env")),
     "cni.subnet-file", Severity.WARN, None),
    ("flannel.1 missing", lambda s: _kernel(s, lambda o: o.device == "flannel.1"), "device.missing", Severity.ERROR, None),
    ("flannel.1 down", lambda s: _relink(s, "flannel.1", up=False), "device.down", Severity.ERROR,
     "ip link set dev flannel.1 up"),
    ("flannel.1 wrong VNI", lambda s: _relink(s, "flannel.1", vxlan=VxlanParams(7, 8472, "192.168.100.11")),
     "device.config", Severity.ERROR, None),
    ("flannel.1 lost its address", lambda s: _kernel(s, lambda o: isinstance(o, Addr) and o.device == "flannel.1"),
     "device.address", Severity.ERROR, "ip addr add 10.5.1.0/32 dev flannel.1"),
    ("flannel.1 MTU", lambda s: _relink(s, "flannel.1", mtu=1400), "device.mtu", Severity.WARN,
     "ip link set dev flannel.1 mtu 1450"),
    ("VtepMAC disagrees", lambda s: _relink(s, "flannel.1", mac="02:11:22:33:44:55"), "device.vtep-mac",
     Severity.ERROR, f"ip link set dev flannel.1 address {OWN_MAC}"),
    ("cni0 MTU", lambda s: _relink(s, "cni0", mtu=1400), "cni0.mtu", Severity.WARN, "ip link set dev cni0 mtu 1450"),
    ("cni0 foreign address", lambda s: _kernel(s, add=(Addr("cni0", "10.5.77.1", 24),)), "cni0.address",
     Severity.ERROR, "ip link delete cni0"),
    ("route missing", lambda s: _kernel(s, lambda o: isinstance(o, Route) and o.dst == "10.5.2.0/24"),
     "route.missing", Severity.ERROR, "ip route replace 10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink"),
    ("route wrong", lambda s: _kernel(s, lambda o: isinstance(o, Route) and o.dst == "10.5.2.0/24",
                                      (Route("10.5.2.0/24", device="eth0", gateway="192.168.100.99"),)),
     "route.wrong", Severity.ERROR, "ip route replace 10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink"),
    ("stale route", lambda s: _kernel(s, add=(Route("10.5.99.0/24", device="eth0", gateway="192.168.100.99", protocol=3),)),
     "route.stale", Severity.WARN, "ip route del 10.5.99.0/24 dev eth0"),
    ("FDB missing", lambda s: _kernel(s, lambda o: isinstance(o, Fdb)), "fdb.missing", Severity.ERROR,
     f"bridge fdb replace {PEER_MAC} dev flannel.1 dst 192.168.100.12 self permanent"),
    ("FDB wrong", lambda s: _kernel(s, lambda o: isinstance(o, Fdb), (Fdb("flannel.1", PEER_MAC, "192.168.100.77"),)),
     "fdb.wrong", Severity.ERROR, None),
    ("FDB stale", lambda s: _kernel(s, add=(Fdb("flannel.1", "02:de:ad:00:00:01", "192.168.100.50"),)),
     "fdb.stale", Severity.WARN, "bridge fdb del 02:de:ad:00:00:01 dev flannel.1 dst 192.168.100.50 self"),
    ("neigh missing", lambda s: _kernel(s, lambda o: isinstance(o, Neigh)), "neigh.missing", Severity.ERROR,
     f"ip neigh replace 10.5.2.0 lladdr {PEER_MAC} dev flannel.1 nud permanent"),
    ("neigh has an old MAC", lambda s: _kernel(s, lambda o: isinstance(o, Neigh), (Neigh("flannel.1", "10.5.2.0", "02:00:00:00:00:99"),)),
     "neigh.wrong", Severity.ERROR, None),
    ("neigh stale", lambda s: _kernel(s, add=(Neigh("flannel.1", "10.5.50.0", "02:de:ad:00:00:01"),)),
     "neigh.stale", Severity.WARN, "ip neigh del 10.5.50.0 dev flannel.1"),
    ("FORWARD DROP, flannel chain missing", lambda s: _ipt(s, policies={"filter/FORWARD": "DROP"}, rules={"nat/POSTROUTING": (MASQ,)},
                                                             chains=frozenset({"filter/FORWARD", "nat/FLANNEL-POSTRTG"})),
     "firewall.forward-drop", Severity.ERROR, None),
    ("flannel chain missing", lambda s: _ipt(s, rules={"nat/POSTROUTING": (MASQ,)},
                                             chains=frozenset({"filter/FORWARD", "nat/FLANNEL-POSTRTG"})),
     "firewall.chain-missing", Severity.WARN, None),
    ("a DROP before flannel's jump", lambda s: _ipt(s, rules={"filter/FORWARD": ("-A FORWARD -j DROP", FWD), "nat/POSTROUTING": (MASQ,)}),
     "firewall.chain-order", Severity.WARN, None),
    ("iptables not installed", lambda s: _node(s, iptables={4: IptablesFacts(4, False, "iptables-save: not installed")}),
     "firewall.tools-missing", Severity.WARN, None),
    ("nft table missing", lambda s: _conf(s, {**CONF, "EnableNFTables": True}), "firewall.chain-missing", Severity.WARN, None),
    ("nft forward chain drops", lambda s: _node(_conf(s, {**CONF, "EnableNFTables": True}), nft=NftFacts(True, chains=(
        NftChainFact("ip", "flannel-ipv4", "forward", "forward", "accept"),
        NftChainFact("ip", "flannel-ipv4", "postrtg", "postrouting", "accept"),
        NftChainFact("inet", "fw", "fwd", "forward", "drop")))),
     "firewall.forward-drop", Severity.ERROR, None),
    ("healthz down", lambda s: _node(s, health=(HttpFact("http://127.0.0.1:8081/healthz", None, error="refused"), s.node.health[1])),
     "health.healthz", Severity.ERROR, None),
    ("readyz 503", lambda s: _node(s, health=(s.node.health[0], HttpFact("http://127.0.0.1:8081/readyz", 503, "no lease"))),
     "health.readyz", Severity.ERROR, None),
    ("datastore unreachable", lambda s: _store(s, error="no answer within 3s", leases=(), config_text=None),
     "datastore.unreachable", Severity.ERROR, None),
    ("no config", lambda s: _store(s, config_text=None), "netconf.missing", Severity.ERROR, None),
    ("bad config", lambda s: _store(s, config_text='{"Network":"10.5.0.0/33"}'), "netconf.invalid", Severity.ERROR, None),
    ("own lease gone", lambda s: _store(s, leases=(PEER,)), "lease.own-missing", Severity.ERROR, None),
    ("undecodable key", lambda s: _store(s, malformed=((KEYS + "junk", "bad key"),)), "lease.malformed", Severity.ERROR, None),
    ("lease outside Network", lambda s: _store(s, leases=(*s.store.leases, replace(lease(3, "02:00:00:00:00:03"),
                                                                                   subnet=IPv4Network("10.9.3.0/24"), name=KEYS + "10.9.3.0-24"))),
     "lease.outside-network", Severity.ERROR, f"ETCDCTL_API=3 etcdctl --endpoints=http://192.168.100.1:2379 del {KEYS}10.9.3.0-24"),
    ("lease without VtepMAC", lambda s: _store(s, leases=(*s.store.leases, replace(lease(3, "x"), attrs=replace(lease(3, "x").attrs, backend_data='{"VNI":1}')))),
     "lease.backend-data", Severity.ERROR, None),
    ("host-gw lease in a vxlan network", lambda s: _store(s, leases=(*s.store.leases, lease(3, "", kind="host-gw"))),
     "lease.backend-mismatch", Severity.ERROR, None),
    ("duplicate public IP", lambda s: _store(s, leases=(*s.store.leases, lease(3, "02:00:00:00:00:03", ip="192.168.100.12"))),
     "lease.duplicate-public-ip", Severity.ERROR, None),
    ("overlapping leases", lambda s: _store(s, leases=(*s.store.leases, replace(lease(3, "02:00:00:00:00:03", created=99),
                                                                               subnet=IPv4Network("10.5.2.0/24")))),
     "lease.overlap", Severity.ERROR, None),
    ("pool 100 % used", lambda s: _store(s, leases=(*s.store.leases, *FAKES)), "lease.pool-usage", Severity.ERROR, None),
    ("pool 95 % used", lambda s: _store(s, leases=(*s.store.leases, *FAKES[:-12])), "lease.pool-usage", Severity.WARN, None),
    ("peer down", lambda s: _probe(s, underlay_ok=False, overlay_ok=False, mtu_ok=False), "probe.peer-unreachable",
     Severity.ERROR, f"ETCDCTL_API=3 etcdctl --endpoints=http://192.168.100.1:2379 del {PEER.name}"),
    ("vxlan port dropped on the peer", lambda s: _probe(s, overlay_ok=False, mtu_ok=False), "probe.backend-port", Severity.ERROR, None),
    ("overlay fails because of our own FDB", lambda s: _probe(_kernel(s, lambda o: isinstance(o, Fdb)), overlay_ok=False, mtu_ok=False),
     "probe.overlay", Severity.ERROR, None),
    ("path MTU too small", lambda s: _probe(s, mtu_ok=False), "probe.mtu", Severity.ERROR, None),
    ("no ping", lambda s: replace(s, probes=ProbeSnapshot(skipped="ping is not installed")), "probe.unavailable", Severity.SKIP, None),
    ("strict rp_filter on flannel.1", lambda s: _node(s, sysctls={**s.node.sysctls, "net.ipv4.conf.flannel.1.rp_filter": "1"}),
     "sysctl.rp-filter", Severity.INFO, "sysctl -w net/ipv4/conf/flannel.1/rp_filter=2"),
    ("IPv6 forwarding off in a dual-stack network", lambda s: _node(_conf(s, {**CONF, "EnableIPv6": True, "IPv6Network": "fd10::/56"}),
                                                                    sysctls={**s.node.sysctls, "net.ipv6.conf.all.forwarding": "0"}),
     "sysctl.ipv6-forwarding", Severity.ERROR, "sysctl -w net.ipv6.conf.all.forwarding=1"),
    ("IPsec connection down", lambda s: _node(_conf(s, {**CONF, "Backend": {"Type": "ipsec", "PSK": "p" * 96}}),
                                              ipsec=(IpsecFact("peer-2", False, "CONNECTING", ""),)),
     "ipsec.sa-down", Severity.ERROR, None),
    ("a node without podCIDR", lambda s: _store(s, nodes_without_cidr=("node9",)), "kube.pod-cidr-missing", Severity.ERROR, None),
]  # fmt: skip


def test_a_healthy_node_reports_nothing_and_exits_0() -> None:
    report = evaluate(healthy())
    assert report.findings == ()
    assert report.exit_code == 0
    assert not report.skipped
    assert {
        "sysctl",
        "cni",
        "device",
        "route",
        "fdb",
        "neigh",
        "firewall",
        "probe",
        "lease",
    } <= set(report.checks)


@pytest.mark.parametrize(
    ("name", "fault", "fid", "severity", "command"), CASES, ids=[c[0] for c in CASES]
)
def test_each_fault_is_named_by_its_check_with_the_fix(
    name: str,
    fault: Callable[[Snapshot], Snapshot],
    fid: str,
    severity: Severity,
    command: str | None,
) -> None:
    report = evaluate(fault(healthy()))
    mine = [f for f in report.findings if f.id == fid]
    assert mine, f"{name}: {fid} not reported; got {[(f.id, f.summary) for f in report.findings]}"
    assert {f.severity for f in mine} == {severity}
    assert all(f.evidence and f.fix and f.summary for f in mine)
    if command is not None:
        assert command in [f.command for f in mine], [f.command for f in mine]
    assert fid in CATALOG
    assert not findings_mod.unknown_ids(report.findings)
    want = {Severity.ERROR: 2, Severity.WARN: 1}.get(severity)
    if want is not None:
        assert report.exit_code >= want


def test_the_pool_finding_counts_used_and_total_and_offers_to_delete_dead_leases() -> None:
    snap = _store(healthy(), leases=(OWN, PEER, *FAKES[:-12]))
    dead = PeerProbe(FAKES[0].name, "192.0.2.3", "10.5.3.0/24", (), False, None, None, 1450)
    snap = replace(snap, probes=ProbeSnapshot((snap.probes.peers[0], dead)))
    pool = next(f for f in evaluate(snap).findings if f.id == "lease.pool-usage")
    assert "used/total = 243/255" in pool.evidence  # 10.5.1.0 .. 10.5.255.0
    assert (
        pool.command
        == f"ETCDCTL_API=3 etcdctl --endpoints=http://192.168.100.1:2379 del {FAKES[0].name}"
    )


def test_an_unreachable_datastore_skips_what_needs_it_and_names_the_endpoints() -> None:
    report = evaluate(_store(healthy(), error="no answer within 3s", leases=(), config_text=None))
    (finding,) = [f for f in report.findings if f.id == "datastore.unreachable"]
    assert "http://192.168.100.1:2379" in finding.summary
    assert {"route", "probe", "lease"} <= set(report.skipped)
    assert report.exit_code == 2
    assert report.to_json()["checks"]["route"] == "skip"


def test_a_wireguard_peer_without_a_handshake_is_a_warning() -> None:
    key = "LUBfDBdaBVwNGuWSIgsd4uzK6nh6xNqU9bvZ31Gno0w="
    conf = {"Network": "10.5.0.0/16", "Backend": {"Type": "wireguard"}}
    peer = replace(PEER, attrs=replace(PEER.attrs, backend_type="wireguard",
                                       backend_data=f'{{"PublicKey":"{key}"}}'))  # fmt: skip
    own = replace(OWN, attrs=replace(OWN.attrs, backend_type="wireguard", backend_data=None))
    snap = _store(healthy(), config_text=json.dumps(conf), leases=(own, peer))
    snap = _node(snap, wireguard=(WgPeerFact("flannel-wg", key, "192.168.100.12:51820", None),))
    ids = evaluate(snap).ids()
    assert "wireguard.handshake" in ids
    snap = _node(snap, wireguard=())
    assert "wireguard.peer-missing" in evaluate(snap).ids()


def test_exit_codes_follow_the_worst_severity() -> None:
    def report(*severities: Severity) -> Report:
        return Report(
            tuple(findings_mod.Finding("sysctl.ip-forward", s, "x", "y", "z") for s in severities),
            ("sysctl",),
        )

    assert report().exit_code == 0
    assert report(Severity.INFO, Severity.SKIP).exit_code == 0
    assert report(Severity.WARN, Severity.INFO).exit_code == 1
    assert report(Severity.WARN, Severity.ERROR).exit_code == 2


def test_table_and_json_carry_id_evidence_fix_and_command() -> None:
    report = evaluate(
        _node(
            healthy(),
            sysctls={"net.ipv4.ip_forward": "0", "net.bridge.bridge-nf-call-iptables": "1"},
        )
    )
    table = render_table(report)
    assert "ERROR sysctl.ip-forward" in table and "run: sysctl -w net.ipv4.ip_forward=1" in table
    obj = json.loads(render_json(report))
    assert obj["exit_code"] == 2
    assert obj["findings"][0]["id"] == "sysctl.ip-forward"
    assert obj["findings"][0]["command"] == "sysctl -w net.ipv4.ip_forward=1"
    assert obj["checks"]["sysctl"] == "error" and obj["checks"]["route"] == "ok"


def _literal_ids() -> set[str]:
    """Every string literal used as a Finding id in the doctor's check modules."""
    root = Path(findings_mod.__file__).parent
    ids = set()
    for path in root.glob("checks_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Finding"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                ids.add(str(node.args[0].value))
    return ids


def test_every_id_a_check_can_emit_is_in_the_catalog_and_tested() -> None:
    literal = _literal_ids()
    assert literal and literal <= CATALOG.keys(), sorted(literal - CATALOG.keys())
    tested = {c[2] for c in CASES} | {"wireguard.handshake", "wireguard.peer-missing"}
    untested = CATALOG.keys() - tested
    assert not untested, sorted(untested)


def test_the_readme_lists_every_check_id() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [fid for fid in CATALOG if f"`{fid}`" not in readme]
    assert not missing, missing
