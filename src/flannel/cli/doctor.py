"""``flannelctl doctor``: check this node and its cluster, say what is wrong and how to fix it.

Run it on a node (or with ``--netns NAME`` inside a lab node's namespace) with flanneld's own
datastore flags. Node checks read the kernel, sysctls, subnet.env, the CNI directories, the
firewall and flanneld's health endpoints; cluster checks read the datastore; active probes ping
every peer over the underlay and the overlay. Output is a list of findings (``-o json`` for
scripts); the exit code is 0 when clean, 1 with warnings, 2 with errors. ``--bundle FILE`` writes
a support bundle instead (``flannel.cli.bundle``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
from pathlib import Path

from flannel.cli.status import add_datastore_flags, settings_from_args

SUBNET_FILE = "/run/flannel/subnet.env"
CNI_CONF_DIR = "/etc/cni/net.d"
CNI_BIN_DIR = "/opt/cni/bin"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``doctor``."""
    parser = subparsers.add_parser(
        "doctor",
        help="find what is wrong with flannel on this node and in the cluster (with the fix)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_datastore_flags(parser)
    parser.add_argument("--netns", default="", help="run inside this network namespace (lab node)")
    parser.add_argument("--subnet-file", default=SUBNET_FILE, help=f"default {SUBNET_FILE}")
    parser.add_argument("--cni-conf-dir", default=CNI_CONF_DIR, help=f"default {CNI_CONF_DIR}")
    parser.add_argument(
        "--cni-bin-dir",
        default=CNI_BIN_DIR,
        help=f"plugin directories, ':'-separated like CNI_PATH (default {CNI_BIN_DIR})",
    )
    parser.add_argument(
        "--healthz-url",
        default="http://127.0.0.1:8081",
        help="flanneld's health server (--healthz-ip/--healthz-port); '' to skip",
    )
    parser.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME", ""),
        help="this node's name (kube mode; default $NODE_NAME, else found by its addresses)",
    )
    parser.add_argument("--public-ip", default="", help="this node's lease PublicIP (behind NAT)")
    parser.add_argument(
        "--wireguard-run-dir", default=os.environ.get("FLANNEL_WIREGUARD_RUN_DIR") or "/run"
    )
    parser.add_argument(
        "--ipsec-run-dir", default=os.environ.get("FLANNEL_IPSEC_RUN_DIR") or "/run"
    )
    parser.add_argument("--no-probes", action="store_true", help="skip the active probes")
    parser.add_argument("--probe-timeout", type=float, default=1.0, help="seconds per probe")
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds for the datastore to answer"
    )
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("--bundle", metavar="FILE", default="", help="write a support bundle")
    parser.set_defaults(func=_cmd_doctor)


def _bundle(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module("flannel.cli.bundle")
    except ImportError as exc:
        if exc.name != "flannel.cli.bundle":
            raise
        print(
            "flannelctl doctor --bundle: support bundles are not available in this build "
            "(module flannel.cli.bundle is missing)",
            file=sys.stderr,
        )
        return 2
    return int(module.write_bundle(Path(args.bundle), args))


def _cmd_doctor(args: argparse.Namespace) -> int:
    from flannel.doctor.collect_node import DoctorError, enter_netns
    from flannel.doctor.findings import render_json, render_table
    from flannel.doctor.run import Options, doctor
    from flannel.doctor.snapshot import Paths
    from flannel.errors import FlannelError

    if args.probe_timeout <= 0 or args.timeout <= 0:
        print("flannelctl doctor: --probe-timeout and --timeout must be > 0", file=sys.stderr)
        return 2
    if args.bundle:
        return _bundle(args)
    try:
        if args.netns:
            enter_netns(args.netns)  # first: every thread and child started later is inside it
        options = Options(
            paths=Paths(
                subnet_file=args.subnet_file,
                cni_conf_dir=args.cni_conf_dir,
                cni_bin_dirs=tuple(d for d in args.cni_bin_dir.split(":") if d),
                healthz_url=args.healthz_url,
            ),
            settings=settings_from_args(args),
            net_config_path=args.net_config_path,
            node_name=args.node_name,
            public_ip=args.public_ip,
            probes=not args.no_probes,
            probe_timeout=args.probe_timeout,
            store_timeout=args.timeout,
            wireguard_run_dir=args.wireguard_run_dir,
            ipsec_run_dir=args.ipsec_run_dir,
        )
        if not args.verbose:  # the etcd client's "insecure http" warning is not a finding
            logging.getLogger("flannel.subnet").setLevel(logging.ERROR)
        report = doctor(options, node_label=args.node_name or args.netns or socket.gethostname())
    except (DoctorError, FlannelError) as exc:
        print(f"flannelctl doctor: {exc}", file=sys.stderr)
        return 2
    print(render_json(report) if args.output == "json" else render_table(report))
    return report.exit_code
