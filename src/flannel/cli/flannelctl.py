"""The ``flannelctl`` operator tool: one dispatcher, each subcommand registered by its owner module.

Subcommand modules are imported lazily per invocation cost: registering is cheap (argparse only);
the heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from flannel import __version__

# module path → it provides register(subparsers); missing modules are skipped with a note.
_SUBCOMMAND_MODULES = (
    "flannel.cli.status",
    "flannel.cli.doctor",
    "flannel.cli.reset",
    "flannel.cli.perf",
    "flannel.lab.cli",
    "flannel.cni.install",
)


def build_parser() -> argparse.ArgumentParser:
    """The full flannelctl parser."""
    parser = argparse.ArgumentParser(
        prog="flannelctl",
        description="Operate pyflannel: status, leases, doctor, reset, perf, lab, install-cni.",
    )
    parser.add_argument("--version", action="version", version=f"flannelctl {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse and dispatch; handlers return the exit code."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
