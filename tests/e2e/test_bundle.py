"""`flannelctl doctor --bundle` on a wireguard lab node with a PSK: the archive holds the node's
state and not one secret — not the PSK, not the node's private key, not the etcd password, in
base64 or in hex."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from flannel.lab.cluster import Lab, LabNode

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
PSK = base64.b64encode(bytes(range(101, 133))).decode()
ETCD_PASSWORD = "hunter2-etcd-password"


def spellings(b64: str) -> list[bytes]:
    return [b64.encode(), base64.b64decode(b64).hex().encode()]


def run_bundle(
    lab: Lab, node: LabNode, archive: Path, cni_bin_dir: str, datastore: list[str]
) -> subprocess.CompletedProcess[str]:
    """``flannelctl doctor --bundle`` for ``node`` of the lab, with the given datastore flags."""
    directory = lab.spec.state_dir / "nodes" / node.name
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "flannel.cli.flannelctl",
            "doctor",
            "--bundle",
            str(archive),
            "--netns",
            node.netns,
            "--subnet-file",
            str(node.subnet_file),
            "--cni-conf-dir",
            str(directory / "cni" / "net.d"),
            "--cni-bin-dir",
            cni_bin_dir,
            "--wireguard-run-dir",
            str(directory / "run"),
            "--ipsec-run-dir",
            str(directory / "run-ipsec"),
            *datastore,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_bundle_of_a_wireguard_node_has_its_state_and_no_secret(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab = lab_factory(nodes=2, backend="wireguard", backend_options={"PSK": PSK}, pods_per_node=1)
    node = lab.nodes[0]
    directory = lab.spec.state_dir / "nodes" / node.name
    private_key = (directory / "wgkey").read_text().strip()
    archive = tmp_path / "bundle.tar.gz"
    done = run_bundle(
        lab,
        node,
        archive,
        f"{lab.spec.state_dir / 'bin'}:/usr/lib/cni",
        ["--etcd-endpoints", lab.etcd_endpoint, "--etcd-password", ETCD_PASSWORD],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wrote {archive}" in done.stdout

    with tarfile.open(archive) as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers()]
        files = {}
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            assert extracted is not None
            files[member.name.split("/", 1)[1]] = extracted.read()
    assert names[0] == "manifest.json"

    everything = b"\n".join(files.values())
    secrets = [*spellings(PSK), *spellings(private_key), ETCD_PASSWORD.encode()]
    leaked = [s for s in secrets if s in everything]
    assert not leaked, f"secrets in the bundle: {leaked}"

    # ... while the state is all there
    assert b"flannel-wg" in files["kernel/ip-link.txt"]
    assert b"FLANNEL_SUBNET=" in files["files/subnet.env"]
    assert b"FLANNEL-POSTRTG" in files["firewall/iptables-save.txt"]
    assert b'"type": "flannel"' in files["cni/net.d/10-flannel.conflist"]
    uapi = files["backend/wireguard-flannel-wg.uapi.txt"].decode()
    assert "private_key=<redacted>" in uapi and "preshared_key=<redacted>" in uapi
    assert "public_key=" in uapi and "allowed_ip=" in uapi
    config = json.loads(files["datastore/config.json"])
    assert config["Backend"] == {"Type": "wireguard", "PSK": "<redacted>"}
    leases = json.loads(files["datastore/leases.json"])["leases"]
    assert {lease["attrs"]["PublicIP"] for lease in leases} == {n.underlay_ip for n in lab.nodes}
    assert all(lease["attrs"]["BackendData"]["PublicKey"] for lease in leases)
    assert files["health/readyz.txt"].startswith(b"# HTTP/1.1 200")
    assert any(name.startswith("logs/") and name.endswith("flanneld.log") for name in names)
    assert b"Running backend" in next(v for k, v in files.items() if k.endswith("flanneld.log"))

    manifest = json.loads(files["manifest.json"])
    collectors = {c["collector"] for c in manifest["collectors"]}
    assert collectors == {"kernel", "files", "cni-state", "datastore", "backend", "health", "logs"}
    assert manifest["args"]["etcd_password"] == "<redacted>"
    assert manifest["redactions"] > 0
    recorded = {f["name"] for c in manifest["collectors"] for f in c["files"]}
    assert recorded == set(names) - {"manifest.json"}


def test_a_bundle_records_an_unreachable_datastore_and_still_has_the_node(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab = lab_factory(nodes=2, pods_per_node=0)
    node = lab.nodes[0]
    archive = tmp_path / "bundle.tar.gz"
    done = run_bundle(
        lab,
        node,
        archive,
        str(lab.spec.state_dir / "bin"),
        ["--etcd-endpoints", "http://192.168.100.1:1", "--timeout", "1"],  # nothing listens there
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with tarfile.open(archive) as tar:
        manifest_member = tar.getmembers()[0]
        extracted = tar.extractfile(manifest_member)
        assert extracted is not None
        manifest = json.loads(extracted.read())
        ip_link = tar.extractfile(f"{manifest_member.name.split('/')[0]}/kernel/ip-link.txt")
        assert ip_link is not None and b"flannel.1" in ip_link.read()
    store = next(c for c in manifest["collectors"] if c["collector"] == "datastore")
    assert store["ok"] is False
    errors = " ".join([store["error"], *(f["error"] for f in store["files"])])
    assert "192.168.100.1:1" in errors
