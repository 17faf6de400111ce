"""``flannelctl reset``: remove everything flannel made on a node, as if flanneld never ran there.

Read the node (``resetscan``), plan the removals (``resetplan``, pure), then apply them in order;
``--dry-run`` prints the plan and changes nothing. Idempotent: a second run finds nothing and exits
0. While a flanneld runs in the node's namespace reset refuses (naming its PID) unless ``--force``,
which ends that flanneld first (SIGTERM by PID, verified, SIGKILL after 10 s) — otherwise its
reconciler would put everything back at once.

Removed: flannel's devices (and with them their addresses, neighbours, FDB entries and routes),
routes tagged with flannel's protocol, the blackhole route of the node's subnet, flannel's XFRM
policies, the CNI bridge and the pod veths on it, flannel's iptables chains and jumps and nftables
tables, helper processes (wireguard-go, charon, the udp forwarder), subnet.env, the flannel CNI
plugin's saved delegate configs and host-local's address store for the network; with
``--release-lease`` the etcd lease or the node's flannel annotations; with ``--remove-cni-conf``
the flannel conflist. Kept: the conflist and the CNI binaries (the installer owns them), the
WireGuard key file (the node's identity), sysctls, the container runtime's CNI result cache, and
the empty built-in iptables chains/tables that iptables-nft created for flannel's jumps.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from flannel.cli import procscan, resetlease, resetscan
from flannel.cli.resetplan import Action, HelperFact, NodeFacts, Plan, plan, render
from flannel.cli.status import add_datastore_flags
from flannel.errors import FlannelError, TrafficError

KERNEL_KINDS = frozenset({"xfrm", "route", "neigh", "fdb", "link"})


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``reset``."""
    parser = subparsers.add_parser(
        "reset",
        help="remove everything flannel made on this node",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--netns", default=None, help="the node's network namespace (default: here)"
    )
    parser.add_argument(
        "--subnet-file",
        type=Path,
        default=None,
        help="default: the conflist's, else /run/flannel/subnet.env",
    )
    parser.add_argument("--cni-conf-dir", type=Path, default=resetscan.DEFAULT_CNI_CONF_DIR)
    parser.add_argument(
        "--cni-data-dir",
        type=Path,
        default=None,
        help="the flannel plugin's dataDir (default: the conflist's, else /var/lib/cni/flannel)",
    )
    parser.add_argument(
        "--cni-ipam-dir",
        type=Path,
        default=None,
        help="host-local's dataDir (default: the conflist's, else /var/lib/cni/networks)",
    )
    parser.add_argument(
        "--bridge", default=None, help="the CNI bridge (default: the conflist's, else cni0)"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        action="append",
        default=[],
        help="where helper pid files are (repeatable; default /run/flannel)",
    )
    parser.add_argument(
        "--network",
        action="append",
        default=[],
        help="cluster CIDR, when subnet.env is gone (repeatable)",
    )
    parser.add_argument(
        "--remove-cni-conf", action="store_true", help="also delete the flannel conflist"
    )
    parser.add_argument(
        "--release-lease",
        action="store_true",
        help="also delete this node's lease (etcd) or annotations (kube)",
    )
    parser.add_argument(
        "--node-name", default="", help="kube mode: this node's name (default $NODE_NAME)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be removed; change nothing"
    )
    parser.add_argument(
        "--force", action="store_true", help="end a running flanneld first instead of refusing"
    )
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_datastore_flags(parser)
    parser.set_defaults(func=run)


def options_of(args: argparse.Namespace) -> resetscan.ResetOptions:
    """The reset's paths and switches from parsed flags."""
    return resetscan.ResetOptions(
        netns=args.netns,
        subnet_file=args.subnet_file,
        cni_conf_dir=args.cni_conf_dir,
        cni_data_dir=args.cni_data_dir,
        cni_ipam_dir=args.cni_ipam_dir,
        bridge=args.bridge,
        run_dirs=tuple(args.run_dir),
        remove_cni_conf=args.remove_cni_conf,
        networks=tuple(args.network),
        env=dict(os.environ),
    )


def _fail(message: str) -> int:
    print(f"flannelctl reset: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    """Plan, then (unless --dry-run) apply; 0 when everything planned is gone."""
    options = options_of(args)
    try:
        running = procscan.find(options.netns, procscan.is_flanneld)
    except procscan.NetnsError as exc:
        return _fail(str(exc))
    where = f"network namespace {options.netns}" if options.netns else "this network namespace"
    pids = ", ".join(str(p.pid) for p in running)
    if running and not args.force and not args.dry_run:
        return _fail(
            f"flanneld is running in {where} (PID {pids}): stop it first, or pass --force to end it"
        )
    extra = [HelperFact("flanneld", p.pid, "", p.argv[0]) for p in running] if args.force else []
    try:
        facts = resetscan.gather(options, extra)
        if args.release_lease:
            facts = _with_lease(args, options, facts)
    except (FlannelError, TimeoutError) as exc:
        return _fail(str(exc) or "the datastore did not answer")
    result = plan(facts)
    if running and not args.force:
        result = Plan(
            result.actions,
            (*result.notes, f"flanneld runs in {where} (PID {pids}): a real run needs --force"),
        )
    if args.dry_run:
        _show(args, result, dry_run=True, errors=[])
        return 0
    errors = apply(args, options, result)
    _show(args, result, dry_run=False, errors=errors)
    return 1 if errors else 0


def _with_lease(
    args: argparse.Namespace, options: resetscan.ResetOptions, facts: NodeFacts
) -> NodeFacts:
    """``facts`` with this node's lease, or a note saying why there is none to release."""
    known = facts.subnets.subnet is not None or facts.subnets.ipv6_subnet is not None
    if not args.kube_subnet_mgr and not known:
        note = "the node's subnet is unknown (no subnet.env): no etcd lease looked up"
        return dataclasses.replace(facts, notes=(*facts.notes, note))
    lease = resetlease.lookup(args, options.netns, facts.subnets)
    if lease is None:
        note = "no lease of this node in the datastore"
        return dataclasses.replace(facts, notes=(*facts.notes, note))
    return dataclasses.replace(facts, lease=lease)


def _show(args: argparse.Namespace, result: Plan, *, dry_run: bool, errors: list[str]) -> None:
    if args.output == "json":
        obj = {
            "dry_run": dry_run,
            "actions": [{"kind": a.kind, "what": a.what} for a in result.actions],
            "notes": list(result.notes),
            "errors": errors,
        }
        print(json.dumps(obj, indent=2))
        return
    print(render(result, dry_run=dry_run))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)


def apply(args: argparse.Namespace, options: resetscan.ResetOptions, result: Plan) -> list[str]:
    """Carry out the plan in order; the errors of the actions that failed (the rest still run)."""
    errors: list[str] = []
    actions = list(result.actions)
    i = 0
    while i < len(actions):
        action = actions[i]
        if action.kind in KERNEL_KINDS:
            batch = [action]
            while i + 1 < len(actions) and actions[i + 1].kind in KERNEL_KINDS:
                i += 1
                batch.append(actions[i])
            from flannel.dataplane import nodescan

            objects = [a.obj for a in batch if a.obj is not None]
            errors += nodescan.remove(options.netns, objects)
        else:
            error = _apply_one(args, options, action)
            if error:
                errors.append(error)
        i += 1
    return errors


def _apply_one(args: argparse.Namespace, options: resetscan.ResetOptions, action: Action) -> str:
    """One non-kernel action; "" when done, else why not."""
    try:
        if action.kind == "process" and action.helper is not None:
            return _stop(action.helper)
        if action.kind == "iptables":
            asyncio.run(_iptables(options, action))
        elif action.kind == "nftables":
            asyncio.run(_nft(options, action))
        elif action.kind == "file" and action.file is not None:
            _remove_path(Path(action.file.path), directory=action.file.directory)
        elif action.kind == "lease" and action.lease is not None:
            resetlease.give_back(args, options.netns, action.lease)
    except (FlannelError, OSError, TimeoutError) as exc:
        return f"{action.what}: {exc or 'timed out'}"
    return ""


def _matcher(helper: HelperFact) -> procscan.Matcher:
    if helper.name == "flanneld":
        return procscan.is_flanneld
    if helper.name == "udp-forwarder":
        return procscan.is_udp_forwarder
    return procscan.runs_program(helper.program)


def _stop(helper: HelperFact) -> str:
    assert helper.pid is not None
    matcher = _matcher(helper)
    proc = procscan.identify(helper.pid, matcher)
    if proc is not None and not procscan.stop(proc, matcher):
        return f"{helper.name} (PID {helper.pid}) did not end"
    if helper.pid_file:
        Path(helper.pid_file).unlink(missing_ok=True)
    return ""


async def _iptables(options: resetscan.ResetOptions, action: Action) -> None:
    from flannel.trafficmgr.iptables import IptablesFamily, find_tools
    from flannel.trafficmgr.runner import Runner

    runner = Runner(options.netns)
    tools = await find_tools(runner, action.ip_version)
    if tools is None:
        raise TrafficError(f"iptables for IPv{action.ip_version} disappeared")
    await IptablesFamily(runner, tools).apply(action.table, [list(line) for line in action.lines])


async def _nft(options: resetscan.ResetOptions, action: Action) -> None:
    from flannel.trafficmgr.runner import Runner

    runner = Runner(options.netns)
    binary = runner.which("nft") or "nft"
    script = "".join(
        f"add table {family} {name}\ndelete table {family} {name}\n"
        for family, name in action.lines
    )
    await runner.check([binary, "-f", "-"], stdin=script, what=f"nft -f ({action.what})")


def _remove_path(path: Path, *, directory: bool) -> None:
    if directory and path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
