"""``flannelctl lab up|status|check|down|demo``.

Exit codes: 0 success; 1 a lab step, the check or an option value failed; 2 the machine cannot run
a lab (not root, a program missing: the message says what to install) or argparse rejected the
command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from flannel.errors import FlannelError

DEFAULT_PREFIX = "pfl"


def default_state_dir(prefix: str) -> Path:
    """Where a lab keeps its state unless --state-dir says otherwise."""
    return Path(f"/tmp/pyflannel-lab-{prefix}")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``lab`` and its subcommands."""
    lab = subparsers.add_parser("lab", help="a multi-node flannel cluster in network namespaces")
    actions = lab.add_subparsers(dest="lab_command", metavar="ACTION")
    lab.set_defaults(func=lambda _args: _usage(lab))

    up = actions.add_parser("up", help="build a lab and leave it running")
    _common(up)
    _shape(up)
    up.set_defaults(func=_guarded(_cmd_up))

    for name, help_text, handler in (
        ("status", "show nodes, pods and processes of a lab", _cmd_status),
        ("check", "run the connectivity matrix; non-zero exit on any failure", _cmd_check),
        ("down", "tear a lab down (idempotent; also cleans up after a crash)", _cmd_down),
    ):
        sub = actions.add_parser(name, help=help_text)
        _common(sub)
        sub.set_defaults(func=_guarded(handler))

    demo = actions.add_parser("demo", help="3-node vxlan lab: status, check, tear down")
    _common(demo)
    demo.add_argument(
        "--keep", action="store_true", help="leave the lab up and show how to explore it"
    )
    demo.add_argument("--backend", default="vxlan", help="backend type (default vxlan)")
    demo.add_argument("--datastore", choices=("etcd", "kube"), default="etcd")
    _family_flags(demo)
    demo.set_defaults(func=_guarded(_cmd_demo))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help="name prefix of everything (default pfl)"
    )
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="default /tmp/pyflannel-lab-<prefix>"
    )


def _shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes, 2..50 (default 3)")
    parser.add_argument("--backend", default="vxlan", help="Backend.Type (default vxlan)")
    parser.add_argument(
        "--network", default="10.5.0.0/16", help="pod network (default 10.5.0.0/16)"
    )
    parser.add_argument("--pods-per-node", type=int, default=2, help="pods per node (default 2)")
    parser.add_argument("--datastore", choices=("etcd", "kube"), default="etcd")
    parser.add_argument("--no-ip-masq", action="store_true", help="run flanneld without --ip-masq")
    parser.add_argument("--nftables", action="store_true", help="EnableNFTables in net-conf.json")
    _family_flags(parser)
    parser.add_argument(
        "--ipv6-network",
        default="fd00:10:5::/56",
        help="IPv6 pod network with --ipv6/--dual-stack (default fd00:10:5::/56)",
    )
    parser.add_argument(
        "--pod-mtu",
        type=int,
        default=0,
        help="the CNI delegate's mtu (default: none, pods get FLANNEL_MTU)",
    )
    parser.add_argument(
        "--network-policy",
        action="store_true",
        help="run the native NetworkPolicy enforcer (flannel-netpol) on every node (kube mode)",
    )


def _family_flags(parser: argparse.ArgumentParser) -> None:
    """``--ipv6`` / ``--dual-stack`` (one at most) → ``args.family``."""
    family = parser.add_mutually_exclusive_group()
    family.add_argument(
        "--ipv6",
        dest="family",
        action="store_const",
        const="ipv6",
        help="IPv6-only: IPv6 underlay and pods, EnableIPv4 false (default: IPv4 only)",
    )
    family.add_argument(
        "--dual-stack",
        dest="family",
        action="store_const",
        const="dual",
        help="IPv4 and IPv6 underlay and pods (EnableIPv6 with --ipv6-network)",
    )
    parser.set_defaults(family="ipv4")


def _state_dir(args: argparse.Namespace) -> Path:
    return args.state_dir if args.state_dir is not None else default_state_dir(args.prefix)


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Map lab errors to exit codes with one clear line instead of a traceback."""
    from flannel.lab.errors import LabPrereqError

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except LabPrereqError as exc:
            print(f"flannelctl lab: {exc}", file=sys.stderr)
            return 2
        except FlannelError as exc:
            print(f"flannelctl lab: {exc}", file=sys.stderr)
            return 1

    return run


def _progress(message: str) -> None:
    print(message, flush=True)


def _cmd_up(args: argparse.Namespace) -> int:
    from flannel.lab.cluster import Lab
    from flannel.lab.spec import LabSpec
    from flannel.lab.view import explore_hints, render_status

    spec = LabSpec(
        nodes=args.nodes,
        backend=args.backend,
        network=args.network,
        pods_per_node=args.pods_per_node,
        datastore=args.datastore,
        state_dir=_state_dir(args),
        prefix=args.prefix,
        ip_masq=not args.no_ip_masq,
        enable_nftables=args.nftables,
        family=args.family,
        ipv6_network=args.ipv6_network,
        pod_mtu=args.pod_mtu,
        network_policy=args.network_policy,
    )
    lab = Lab.up(spec, progress=_progress)
    print(render_status(lab))
    print(explore_hints(lab))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from flannel.lab.cluster import Lab
    from flannel.lab.view import render_status

    print(render_status(Lab.attach(_state_dir(args))))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from flannel.lab.cluster import Lab

    report = Lab.attach(_state_dir(args)).check()
    print(report.render())
    return 0 if report.ok else 1


def _cmd_down(args: argparse.Namespace) -> int:
    from flannel.lab.errors import LabError
    from flannel.lab.state import LabState
    from flannel.lab.teardown import teardown

    state_dir = _state_dir(args)
    try:
        state: LabState | None = LabState.load(state_dir)
    except LabError:
        state = None  # crashed before the state file existed, or already down: sweep by name
    prefix = state.spec.prefix if state is not None else args.prefix
    removed = teardown(state, prefix, state_dir)
    print(f"lab {prefix}: " + (f"removed {len(removed)} items" if removed else "nothing to remove"))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from flannel.lab.demo import run_demo

    return run_demo(
        prefix=args.prefix,
        state_dir=_state_dir(args),
        keep=args.keep,
        backend=args.backend,
        datastore=args.datastore,
        family=args.family,
        progress=_progress,
    )
