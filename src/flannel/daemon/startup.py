"""Startup steps that talk to the datastore: create the subnet manager, fetch the config."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from flannel.errors import ConfigError, DatastoreError, FlannelError
from flannel.model import subnetenv
from flannel.model.config import NetworkConfig
from flannel.model.ifaceselect import Stack
from flannel.model.settings import Settings
from flannel.subnet.base import SubnetManager

logger = logging.getLogger(__name__)

CONFIG_RETRY_SECONDS = 1.0


async def create_subnet_manager(
    settings: Settings, env: Mapping[str, str], previous: subnetenv.PreviousSubnets
) -> SubnetManager:
    """The kube or etcd manager; each imports its client library only when chosen (memory)."""
    if settings.kube_subnet_mgr:
        from flannel.subnet.kube import KubeSubnetManager

        return await KubeSubnetManager.create(settings, env=env)
    from flannel.subnet.etcd import EtcdSubnetManager

    return EtcdSubnetManager.from_settings(settings, previous.subnet, previous.ipv6_subnet)


async def fetch_network_config(manager: SubnetManager) -> NetworkConfig:
    """Retry every second until the config is there and valid.

    Each distinct problem is logged once at error level (then at -v 1), so a missing config does not
    flood the log but the first line says exactly which key or file to fix.
    """
    last_problem = ""
    while True:
        try:
            config = await manager.get_network_config()
        except (ConfigError, DatastoreError) as exc:
            problem = str(exc)
            if problem != last_problem:
                logger.error("Couldn't fetch network config: %s (retrying every second)", problem)
                last_problem = problem
            else:
                logger.debug("Couldn't fetch network config: %s", problem)
            await asyncio.sleep(CONFIG_RETRY_SECONDS)
            continue
        if config.backend is None:
            logger.warning(
                "no Backend in the network config: using udp as upstream flannel does; "
                'set "Backend": {"Type": "vxlan"} (recommended)'
            )
        logger.info("Found network config - Backend type: %s", config.backend_type)
        return config


def ip_stack(config: NetworkConfig) -> Stack:
    """v4-only, v6-only or dual from the config; neither is fatal (``none defined stack``)."""
    if config.enable_ipv4 and config.enable_ipv6:
        return "dual"
    if config.enable_ipv4:
        return "ipv4"
    if config.enable_ipv6:
        return "ipv6"
    raise FlannelError("none defined stack: enable IPv4 and/or IPv6 in the network config")
