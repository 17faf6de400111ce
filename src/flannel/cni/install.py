"""``flannelctl install-cni``: put the ``flannel`` plugin and the standard conflist in place.

The plugin is installed self-contained: its stdlib-only modules are copied next to it (into
``<bin-dir>/.pyflannel-cni``) and a launcher with a fixed interpreter and ``-IS`` (isolated, no site
scan) runs them. That keeps pod start fast and lets a DaemonSet init container install a plugin that
runs on the host with the host's own ``/usr/bin/python3``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LIB_DIR_NAME = ".pyflannel-cni"
CONFLIST_NAME = "10-flannel.conflist"
STANDARD_CONFLIST = {
    "name": "cbr0",
    "cniVersion": "0.3.1",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
_PACKAGE_STUB = '"""pyflannel CNI plugin library (installed by flannelctl install-cni)."""\n'


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_python() -> str:
    """/usr/bin/python3 when present (fast, no shims), else the interpreter running us."""
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def install_cni(
    *, bin_dir: Path, conf_dir: Path | None = None, python: str | None = None, force: bool = False
) -> list[Path]:
    """Install the launcher and library into ``bin_dir`` and the conflist into ``conf_dir``."""
    bin_dir = Path(bin_dir)
    interpreter = python or default_python()
    runnable_here = os.access(interpreter, os.X_OK)
    if python is None and not runnable_here:
        raise OSError(f"interpreter {interpreter} is not executable (pass --python PATH)")
    # An explicit --python may name the HOST's interpreter from inside an init container, where it
    # does not exist: install anyway, and skip the byte-compiling only it could do.
    bin_dir.mkdir(parents=True, exist_ok=True)
    lib = bin_dir / LIB_DIR_NAME
    (lib / "flannel" / "cni").mkdir(parents=True, exist_ok=True)
    _atomic_write(lib / "flannel" / "__init__.py", _PACKAGE_STUB.encode(), 0o644)
    source = Path(__file__).resolve().parent
    for module in sorted(source.glob("*.py")):
        _atomic_write(lib / "flannel" / "cni" / module.name, module.read_bytes(), 0o644)
    # Byte-compile with the plugin's own interpreter now: pod start must not pay for compiling.
    if runnable_here:
        subprocess.run(
            [interpreter, "-I", "-m", "compileall", "-q", str(lib)],
            check=False,
            capture_output=True,
        )
    launcher = (
        f"#!{interpreter} -IS\n"
        "import sys\n"
        f"sys.path.insert(0, {str(lib)!r})\n"
        "from flannel.cni.plugin import main\n"
        "sys.exit(main())\n"
    )
    written = [bin_dir / "flannel"]
    _atomic_write(bin_dir / "flannel", launcher.encode(), 0o755)
    if conf_dir is not None:
        conf_dir = Path(conf_dir)
        conf_dir.mkdir(parents=True, exist_ok=True)
        target = conf_dir / CONFLIST_NAME
        if force or not target.exists():
            _atomic_write(target, (json.dumps(STANDARD_CONFLIST, indent=2) + "\n").encode(), 0o644)
            written.append(target)
    return written


def _handler(args: argparse.Namespace) -> int:
    try:
        written = install_cni(
            bin_dir=Path(args.bin_dir),
            conf_dir=Path(args.conf_dir) if args.conf_dir else None,
            python=args.python,
            force=args.force,
        )
    except OSError as exc:
        print(f"install-cni: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"installed {path}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``install-cni`` to flannelctl."""
    parser = subparsers.add_parser(
        "install-cni", help="install the flannel CNI plugin and the standard conflist"
    )
    parser.add_argument("--bin-dir", required=True, help="CNI plugin directory, e.g. /opt/cni/bin")
    parser.add_argument("--conf-dir", help="CNI config directory, e.g. /etc/cni/net.d")
    parser.add_argument("--python", help="interpreter for the plugin (default /usr/bin/python3)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing conflist")
    parser.set_defaults(func=_handler)
