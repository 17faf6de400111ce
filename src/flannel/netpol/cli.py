"""``flannel-netpol``: the opt-in native NetworkPolicy enforcer (one per node, beside flanneld)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from flannel.errors import DatastoreError, TrafficError
from flannel.model.settings import Settings
from flannel.netpol.compiler import Options
from flannel.netpol.enforcer import Enforcer
from flannel.subnet.kube_client import KubeApi, make_client
from flannel.trafficmgr.runner import Runner


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flannel-netpol", description=__doc__)
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""))
    parser.add_argument("--kube-api-url", default="")
    parser.add_argument("--kubeconfig-file", default="")
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=30.0,
        help="how often the table is compared with a fresh compile and the kernel (repair); "
        "changes themselves are programmed as they are watched",
    )
    parser.add_argument(
        "--filter-host-traffic",
        action="store_true",
        help="also filter node -> pod traffic (default: allowed, kubelet probes need it)",
    )
    parser.add_argument("--netns", default=None, help="run nft inside this network namespace")
    parser.add_argument(
        "--status-file",
        default="",
        help="keep a JSON status here (resourceVersions enforced, write counters)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exits 1 with a message naming the input on bad configuration."""
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.node_name:
        print("flannel-netpol: --node-name (or NODE_NAME) is required", file=sys.stderr)
        return 1
    if args.resync_seconds <= 0:
        print(
            f"flannel-netpol: --resync-seconds {args.resync_seconds:g} must be positive",
            file=sys.stderr,
        )
        return 1
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if not (args.kube_api_url or args.kubeconfig_file or in_cluster):
        print(
            "flannel-netpol: no Kubernetes API configured; in etcd mode no NetworkPolicy objects "
            "exist, so the enforcer is off (pass --kube-api-url or --kubeconfig-file in kube mode)",
            file=sys.stderr,
        )
        return 1
    settings = Settings(kube_api_url=args.kube_api_url, kubeconfig_file=args.kubeconfig_file)
    options = Options(node=args.node_name, allow_host=not args.filter_host_traffic)
    try:
        api = KubeApi(make_client(settings))
        status = Path(args.status_file) if args.status_file else None
        enforcer = Enforcer(
            api, Runner(netns=args.netns), options, args.resync_seconds, status_file=status
        )
        asyncio.run(enforcer.run())
    except (DatastoreError, TrafficError) as exc:
        print(f"flannel-netpol: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
