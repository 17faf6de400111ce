"""After acquiring, the etcd manager keeps nothing of the other nodes' leases (issue #12 RSS budget).

The acquisition decodes every lease in the cluster and caches the results between its own re-lists.
Kept for the daemon's life (as after the one-policy refactor) that cache held a second decoded copy
of every peer — ~1.6 MiB of flanneld's 50 MiB at 1,200 leases — beside the watch's own. Renewals
still need our key's etcd lease id, so exactly that entry stays.
"""

from __future__ import annotations

import pytest
from etcd_helpers import CONFIG, PREFIX, ManagerFactory, attrs

from flannel.subnet.etcd_client import EtcdClient

pytestmark = pytest.mark.etcd


async def test_an_acquisition_keeps_no_decoded_peer_leases_and_renewal_still_revokes_the_old(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    for third in range(2, 12):
        await etcd_client.put(
            f"{PREFIX}/subnets/10.3.{third}.0-24", attrs(f"5.5.5.{third}").to_json()
        )
    manager = make_manager()
    lease = await manager.acquire_lease(attrs("1.2.3.4"))
    own_key = manager.subnet_key(lease.subnet, lease.ipv6_subnet)
    assert manager._acquire_decoder._decoded == {}
    assert set(manager._etcd_leases) == {own_key}
    before = manager._etcd_leases[own_key]
    renewed = await manager.renew_lease(lease)
    assert renewed.subnet == lease.subnet
    assert manager._etcd_leases[own_key] != before
    assert await etcd_client.lease_keys(before) is None  # the replaced etcd lease was revoked
