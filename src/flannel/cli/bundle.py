"""``flannelctl doctor --bundle FILE``: a support archive of one node, with secrets redacted.

The archive (tar.gz, mode 0600) holds ``manifest.json`` and one file per thing collected: logs,
net-conf and the CNI config, the leases or node annotations, ``ip -d link/addr/route``, rules,
neighbours, the FDB, XFRM policies and states, ``nft list ruleset``/``iptables-save``,
subnet.env, the CNI plugin's state, wireguard-go's and charon's state, flanneld's health
endpoints (see ``bundlecollect``). Every collector failure is recorded in the manifest — which
collector, which file, the error — and never aborts the archive: a half-broken node is when a
bundle is needed most.

Redaction (``flannel.model.redact``) runs on everything, the manifest included, after all of it is
collected: first every document is read for the secrets it states (the etcd password from the
flags, ``Backend.PSK`` in the network config, WireGuard keys in UAPI dumps), then each is written
with those values — in any encoding — and every secret-shaped field replaced by ``<redacted>``.

``write_bundle(path, args)`` is what ``doctor`` calls with its own parsed flags.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import sys
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flannel import __version__
from flannel.cli.bundlecollect import COLLECTORS, Collector, Context, Entry
from flannel.model.redact import Redactor, is_secret_name

DEFAULTS: dict[str, Any] = {
    "netns": "",
    "subnet_file": "/run/flannel/subnet.env",
    "cni_conf_dir": "/etc/cni/net.d",
    "cni_bin_dir": "/opt/cni/bin",
    "wireguard_run_dir": os.environ.get("FLANNEL_WIREGUARD_RUN_DIR") or "/run",
    "ipsec_run_dir": os.environ.get("FLANNEL_IPSEC_RUN_DIR") or "/run",
    "healthz_url": "http://127.0.0.1:8081",
    "net_config_path": "/etc/kube-flannel/net-conf.json",
    "bundle_log": (),
}


@dataclass(frozen=True)
class Outcome:
    """What one collector produced, for the manifest."""

    collector: str
    entries: tuple[Entry, ...]
    error: str = ""
    seconds: float = 0.0


def context_of(args: argparse.Namespace) -> Context:
    """Doctor's flags (missing ones take doctor's defaults) as a collection context."""

    def get(name: str) -> Any:
        value = getattr(args, name, None)
        return DEFAULTS[name] if value is None else value

    bins = str(get("cni_bin_dir"))
    return Context(
        netns=str(get("netns")) or None,
        subnet_file=Path(get("subnet_file")),
        cni_conf_dir=Path(get("cni_conf_dir")),
        cni_bin_dirs=tuple(Path(d) for d in bins.split(":") if d),
        wireguard_run_dir=Path(get("wireguard_run_dir")),
        ipsec_run_dir=Path(get("ipsec_run_dir")),
        healthz_url=str(get("healthz_url")),
        net_config_path=Path(get("net_config_path")),
        args=args,
        extra_logs=tuple(Path(p) for p in get("bundle_log")),
    )


def collect(
    ctx: Context, collectors: Iterable[tuple[str, Collector]] = COLLECTORS
) -> list[Outcome]:
    """Run every collector; one that raises becomes an Outcome carrying the error."""
    outcomes = []
    for name, collector in collectors:
        started = time.monotonic()
        try:
            entries = tuple(collector(ctx))
            error = ""
        except Exception as exc:  # recorded in the manifest, never fatal
            entries, error = (), f"{type(exc).__name__}: {exc}"
        outcomes.append(Outcome(name, entries, error, time.monotonic() - started))
    return outcomes


def _known_secrets(args: argparse.Namespace, outcomes: list[Outcome], redactor: Redactor) -> None:
    """Seed the redactor with every secret the flags and the documents state."""
    for key, value in vars(args).items():
        if isinstance(value, str) and is_secret_name(key):
            redactor.add(value)
    for outcome in outcomes:
        for entry in outcome.entries:
            redactor.learn(entry.text)
            if entry.json:
                with contextlib.suppress(ValueError):
                    redactor.json(json.loads(entry.text))


def _args_json(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key: value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        for key, value in sorted(vars(args).items())
        if key != "func"
    }


def build(args: argparse.Namespace, outcomes: list[Outcome]) -> list[tuple[str, bytes]]:
    """The archive's members (name, content): manifest first, everything redacted."""
    redactor = Redactor()
    _known_secrets(args, outcomes, redactor)
    redactor.count = 0  # count what is replaced in the archive, not what seeding looked at
    members: list[tuple[str, bytes]] = []
    records = []
    for outcome in outcomes:
        files = []
        for entry in outcome.entries:
            before = redactor.count
            text = (
                redactor.json_text(entry.text)
                if entry.json and entry.text
                else redactor.text(entry.text)
            )
            data = text.encode()
            members.append((entry.name, data))
            replaced = redactor.count - before
            files.append(
                {
                    "name": entry.name,
                    "source": redactor.text(entry.source),
                    "bytes": len(data),
                    "redactions": replaced,
                    "error": redactor.text(entry.error),
                }
            )
        records.append(
            {
                "collector": outcome.collector,
                "ok": not outcome.error and not any(f["error"] for f in files),
                "error": redactor.text(outcome.error),
                "seconds": round(outcome.seconds, 3),
                "files": files,
            }
        )
    manifest = {
        "tool": f"flannelctl {__version__}",
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": socket.gethostname(),
        "netns": getattr(args, "netns", "") or None,
        "args": redactor.json(_args_json(args)),
        "redactions": redactor.count,
        "collectors": records,
    }
    text = redactor.text(json.dumps(manifest, indent=2))
    return [("manifest.json", text.encode()), *members]


def write_archive(path: Path, members: list[tuple[str, bytes]], root: str) -> None:
    """A tar.gz of ``members`` under ``root/``, readable only by its owner, written atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    now = time.time()
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for name, data in members:
                info = tarfile.TarInfo(f"{root}/{name}")
                info.size, info.mtime, info.mode = len(data), now, 0o600
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bundle(
    path: Path,
    args: argparse.Namespace,
    collectors: Iterable[tuple[str, Collector]] = COLLECTORS,
) -> int:
    """Collect, redact and write the bundle; 0 when written (collector failures are in the
    manifest), 2 when the archive itself cannot be written."""
    ctx = context_of(args)
    outcomes = collect(ctx, collectors)
    members = build(args, outcomes)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    root = f"flannel-bundle-{ctx.netns or socket.gethostname()}-{stamp}"
    try:
        write_archive(path, members, root)
    except OSError as exc:
        print(f"flannelctl doctor --bundle: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 2
    failed = [o.collector for o in outcomes if o.error]
    partial = sum(1 for o in outcomes for e in o.entries if e.error)
    print(
        f"wrote {path}: {len(members)} files"
        + (f"; collectors failed: {', '.join(failed)}" if failed else "")
        + (f"; {partial} file(s) incomplete" if partial else "")
        + " (details in manifest.json)"
    )
    return 0
