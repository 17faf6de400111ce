"""Time for 200 nodes (EtcdSubnetManager instances) to all hold leases against a real etcd.

Baseline, same run, same etcd, same client library: 200 clients each doing the minimal work a lease
needs (grant a 24 h etcd lease + one create-if-absent txn on a distinct key). The headline figure is
the ratio manager/baseline; absolute seconds depend on this noisy 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import statistics
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

from flannel.lab.etcd import EtcdServer
from flannel.model.lease import LeaseAttrs
from flannel.subnet.etcd import EtcdSubnetManager
from flannel.subnet.etcd_client import EtcdClient

NODES = 200
ROUNDS = 3
CONFIG = '{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}'
RESULT = Path(__file__).resolve().parent / "results" / "lease_acquire.json"


class _RaceCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "taken by another node" in record.getMessage():
            self.count += 1


async def _managers_round(endpoint: str, prefix: str) -> float:
    setup = EtcdClient([endpoint])
    await setup.put(f"{prefix}/config", CONFIG)
    await setup.close()
    managers = [EtcdSubnetManager(endpoints=[endpoint], prefix=prefix) for _ in range(NODES)]
    started = time.perf_counter()
    leases = await asyncio.gather(
        *(
            m.acquire_lease(LeaseAttrs(public_ip=IPv4Address(int(IPv4Address("192.0.2.0")) + i)))
            for i, m in enumerate(managers)
        )
    )
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(m.close() for m in managers))
    assert len({lease.subnet for lease in leases}) == NODES, "duplicate subnets"
    return elapsed


async def _baseline_round(endpoint: str, prefix: str) -> float:
    clients = [EtcdClient([endpoint]) for _ in range(NODES)]

    async def one(i: int, client: EtcdClient) -> None:
        lease_id, _ttl = await client.grant(86400)
        assert await client.create(f"{prefix}/subnets/k{i}", '{"PublicIP":"1.2.3.4"}', lease_id)

    started = time.perf_counter()
    await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.close() for c in clients))
    return elapsed


async def _run(endpoint: str) -> dict[str, object]:
    counter = _RaceCounter()
    etcd_logger = logging.getLogger("flannel.subnet.etcd")
    etcd_logger.addHandler(counter)
    etcd_logger.setLevel(logging.WARNING)
    etcd_logger.propagate = False
    rows = []
    for round_no in range(ROUNDS):
        base = await _baseline_round(endpoint, f"/bench{round_no}/base")
        mgr = await _managers_round(endpoint, f"/bench{round_no}/flannel")
        rows.append(
            {
                "round": round_no + 1,
                "nodes": NODES,
                "baseline_s": round(base, 3),
                "manager_s": round(mgr, 3),
                "ratio": round(mgr / base, 2),
            }
        )
    median_ratio = statistics.median(r["ratio"] for r in rows)  # type: ignore[misc]
    return {
        "nodes": NODES,
        "rounds": ROUNDS,
        "baseline": "grant + create-if-absent txn per node, same client library",
        "median_manager_s": statistics.median(r["manager_s"] for r in rows),  # type: ignore[misc]
        "median_baseline_s": statistics.median(r["baseline_s"] for r in rows),  # type: ignore[misc]
        "median_ratio": median_ratio,
        "lost_races_retried": counter.count,
        "rows": rows,
    }


def main() -> None:
    """Start a loopback etcd, run the rounds, print a table, write the JSON."""
    logging.basicConfig(level=logging.ERROR)
    port = 23000 + secrets.randbelow(450) * 2
    with tempfile.TemporaryDirectory(prefix="pfa-bench-") as tmp:
        server = EtcdServer(
            data_dir=Path(tmp) / "etcd",
            client_url=f"http://127.0.0.1:{port}",
            peer_url=f"http://127.0.0.1:{port + 1}",
        )
        with server:
            result = asyncio.run(_run(server.endpoint))
    print(f"{'round':>5} {'nodes':>5} {'baseline s':>10} {'manager s':>10} {'ratio':>6}")
    for row in result["rows"]:  # type: ignore[attr-defined]
        print(
            f"{row['round']:>5} {row['nodes']:>5} {row['baseline_s']:>10} "
            f"{row['manager_s']:>10} {row['ratio']:>6}"
        )
    print(f"median ratio manager/baseline: {result['median_ratio']}")
    print(f"lost create races retried: {result['lost_races_retried']}")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
