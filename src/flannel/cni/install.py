"""``flannelctl install-cni``: put the ``flannel`` plugin and its conflist in place on a node.

The plugin is installed self-contained: its stdlib-only modules are copied next to it (into
``<bin-dir>/.pyflannel-cni``) and a launcher with a fixed interpreter and ``-IS`` (isolated, no site
scan) runs them, which keeps pod start fast. The interpreter is the node's ``/usr/bin/python3`` when
it is recent enough (``--python auto``), else a self-contained one copied from the interpreter
running this command (install_runtime.py), so nodes without python work too.

A DaemonSet init container sees the node only through its mounts: ``--bin-dir`` is where the node's
CNI bin dir is mounted, ``--host-bin-dir`` where it is on the node (launchers carry node paths), and
``--host-root`` where the node's ``/usr`` is mounted for the version check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

from flannel.cni.install_runtime import (
    BundleError,
    Runtime,
    bundle_runtime,
    launcher_elf,
    make_dirs,
    prune_runtimes,
)

LIB_DIR_NAME = ".pyflannel-cni"
CONFLIST_NAME = "10-flannel.conflist"
HOST_PYTHON = "/usr/bin/python3"
# The plugin is tested on 3.11 (the image's interpreter); an older node python gets the bundled one.
MIN_PYTHON = (3, 11)
STANDARD_CONFLIST = {
    "name": "cbr0",
    "cniVersion": "0.3.1",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
_PACKAGE_STUB = '"""pyflannel CNI plugin library (installed by flannelctl install-cni)."""\n'
_VERSION_NAME = re.compile(r"python(\d+)\.(\d+)$")
_MAX_CONFLIST = 1 << 20


class InstallError(OSError):
    """install-cni cannot do what was asked; the message names the input and the fix."""


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write a temp file in the same directory and rename it over ``path`` (never half-written)."""
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


def _resolve_in_root(root: Path, path: str) -> PurePosixPath | None:
    """Follow ``path``'s symlinks as the node would, inside ``root``; None when it dangles."""
    current = PurePosixPath(path)
    for _ in range(40):
        real = root / current.relative_to("/")
        if not real.is_symlink():
            return current if real.is_file() else None
        target = PurePosixPath(os.readlink(real))
        joined = target if target.is_absolute() else current.parent / target
        current = PurePosixPath(os.path.normpath(joined))
    return None


def host_python_version(host_root: Path, path: str = HOST_PYTHON) -> tuple[int, int] | None:
    """The (major, minor) of the node's interpreter at ``path``, or None when there is none.

    On the node itself (``host_root`` is ``/``) the interpreter is asked. From a container, which
    cannot run it, the version is read from the file it resolves to (``python3.11``) and its stdlib
    must be present; anything unclear counts as absent, so the bundled interpreter is used.
    """
    if host_root == Path("/"):
        if not os.access(path, os.X_OK):
            return None
        probe = "import sys; print(sys.version_info[0], sys.version_info[1])"
        try:
            done = subprocess.run(
                [path, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=30
            )
        except OSError:
            return None
        words = done.stdout.split()
        if done.returncode != 0 or len(words) != 2:
            return None
        return int(words[0]), int(words[1])
    resolved = _resolve_in_root(host_root, path)
    match = _VERSION_NAME.search(resolved.name) if resolved else None
    if resolved is None or match is None:
        return None
    version = int(match[1]), int(match[2])
    stdlib = f"python{version[0]}.{version[1]}/os.py"
    prefix = host_root / resolved.parent.parent.relative_to("/")
    if not any((prefix / lib / stdlib).is_file() for lib in ("lib", "lib64")):
        return None
    return version


def _install_library(lib: Path) -> None:
    make_dirs(lib / "flannel" / "cni")
    for directory in (lib, lib / "flannel", lib / "flannel" / "cni"):
        os.chmod(directory, 0o755)
    _atomic_write(lib / "flannel" / "__init__.py", _PACKAGE_STUB.encode(), 0o644)
    source = Path(__file__).resolve().parent
    for module in sorted(source.glob("*.py")):
        if not module.name.startswith("install"):  # the plugin never imports the installer
            _atomic_write(lib / "flannel" / "cni" / module.name, module.read_bytes(), 0o644)


def _entry_script(host_lib: Path) -> str:
    return (
        "import sys\n"
        f"sys.path.insert(0, {str(host_lib)!r})\n"
        "from flannel.cni.plugin import main\n"
        "sys.exit(main())\n"
    )


def _check_bundled(runtime: Runtime, lib: Path) -> None:
    """Byte-compile the bundle and run the plugin's VERSION with it: proof that it starts.

    The interpreter running us compiles (the bundle is a copy of it, so the bytecode is the same);
    the bundle itself has no compileall.
    """
    compiled = subprocess.run(
        [sys.executable, "-I", "-m", "compileall", "-q", str(lib / "flannel"), str(runtime.root)],
        capture_output=True,
        text=True,
        timeout=300,
        umask=0o022,  # __pycache__ dirs: never world-writable, whatever our umask
    )
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); from flannel.cni.plugin import main; main()"
    )
    version = subprocess.run(
        [*runtime.command(lib), "-c", probe, str(lib)],
        capture_output=True,
        text=True,
        env={"CNI_COMMAND": "VERSION"},
        timeout=60,
    )
    if compiled.returncode != 0 or version.returncode != 0:
        raise InstallError(
            f"the bundled interpreter in {runtime.root} does not start: "
            f"{(compiled.stdout + compiled.stderr + version.stderr).strip()[-400:]}"
        )


def _install_bundled(bin_dir: Path, lib: Path, host_lib: Path) -> Runtime:
    runtime = bundle_runtime(base=lib, entry=lib / "flannel" / "cni" / "plugin.py")
    _check_bundled(runtime, lib)
    _atomic_write(lib / "launch.py", _entry_script(host_lib).encode(), 0o644)
    argv = [*runtime.command(host_lib), str(host_lib / "launch.py")]
    error = json.dumps(
        {
            "cniVersion": "0.1.0",
            "code": 999,
            "msg": f"flannel launcher: cannot execute {argv[0]} "
            "(reinstall with flannelctl install-cni)",
        }
    )
    _atomic_write(bin_dir / "flannel", launcher_elf(runtime.machine, argv, error + "\n"), 0o755)
    prune_runtimes(lib, runtime.root)
    return runtime


def _install_host(bin_dir: Path, lib: Path, host_lib: Path, interpreter: str, here: bool) -> None:
    if here:  # compile now with the plugin's own interpreter: pod start must not pay for it
        subprocess.run(
            [interpreter, "-I", "-m", "compileall", "-q", str(lib / "flannel")],
            check=False,
            capture_output=True,
            timeout=300,
            umask=0o022,  # __pycache__ dirs: never world-writable, whatever our umask
        )
    launcher = f"#!{interpreter} -IS\n" + _entry_script(host_lib)
    _atomic_write(bin_dir / "flannel", launcher.encode(), 0o755)


def install_plugin(
    *,
    bin_dir: Path,
    host_bin_dir: Path | None = None,
    python: str = "auto",
    host_root: Path = Path("/"),
) -> str:
    """Install the launcher and library into ``bin_dir``; returns the interpreter chosen.

    ``python``: ``auto`` (the node's python3 if >= MIN_PYTHON, else bundled), ``bundled``, or the
    node path of an interpreter to use as is.
    """
    bin_dir, host_bin = Path(bin_dir), Path(host_bin_dir or bin_dir)
    if not host_bin.is_absolute():
        raise InstallError(f"--host-bin-dir {host_bin} must be an absolute path")
    if python not in ("auto", "bundled") and not python.startswith("/"):
        raise InstallError(f"--python {python!r}: use auto, bundled or an absolute path")
    make_dirs(bin_dir)
    lib, host_lib = bin_dir / LIB_DIR_NAME, host_bin / LIB_DIR_NAME
    _install_library(lib)
    if python == "auto":
        found = host_python_version(Path(host_root))
        python = HOST_PYTHON if found is not None and found >= MIN_PYTHON else "bundled"
    if python == "bundled":
        runtime = _install_bundled(bin_dir, lib, host_lib)
        return f"bundled {runtime.root.name}"
    # An explicit --python may name the node's interpreter from inside a container, where it is
    # not visible: install anyway, and skip the byte-compiling only it could do.
    here = Path(host_root) == Path("/") and os.access(python, os.X_OK)
    _install_host(bin_dir, lib, host_lib, python, here)
    return python


def install_conflist(conf_dir: Path, source: Path | None, *, force: bool) -> Path | None:
    """Write the conflist atomically: ``source``'s (always, after checking it) or the standard one.

    The standard one never replaces an existing file unless ``force``.
    """
    conf_dir = Path(conf_dir)
    target = conf_dir / CONFLIST_NAME
    if source is None:
        if target.exists() and not force:
            return None
        data = (json.dumps(STANDARD_CONFLIST, indent=2) + "\n").encode()
    else:
        data = _read_conflist(Path(source))
    make_dirs(conf_dir)
    _atomic_write(target, data, 0o644)
    return target


def _read_conflist(source: Path) -> bytes:
    try:
        data = source.read_bytes()[: _MAX_CONFLIST + 1]
        parsed = json.loads(data)
    except (OSError, ValueError, RecursionError) as exc:
        raise InstallError(f"--conflist {source}: not a readable JSON file ({exc})") from exc
    if len(data) > _MAX_CONFLIST or not isinstance(parsed, dict):
        raise InstallError(f"--conflist {source}: expected one JSON object of at most 1 MiB")
    if not isinstance(parsed.get("plugins"), list) and not isinstance(parsed.get("type"), str):
        raise InstallError(
            f'--conflist {source}: neither a conflist ("plugins": [...]) nor a config ("type")'
        )
    return data


def install_cni(
    *,
    bin_dir: Path | None = None,
    conf_dir: Path | None = None,
    python: str | None = None,
    force: bool = False,
    host_bin_dir: Path | None = None,
    host_root: Path = Path("/"),
    conflist: Path | None = None,
    chosen: list[str] | None = None,
) -> list[Path]:
    """Install the plugin into ``bin_dir`` and/or the conflist into ``conf_dir``; the paths written.

    ``chosen`` (if given) receives the interpreter the launcher uses.
    """
    written: list[Path] = []
    if bin_dir is not None:
        used = install_plugin(
            bin_dir=bin_dir, host_bin_dir=host_bin_dir, python=python or "auto", host_root=host_root
        )
        written.append(Path(bin_dir) / "flannel")
        if chosen is not None:
            chosen.append(used)
    if conf_dir is not None:
        target = install_conflist(conf_dir, conflist, force=force)
        written += [target] if target else []
    return written


def _handler(args: argparse.Namespace) -> int:
    if not args.bin_dir and not args.conf_dir:
        print("install-cni: give --bin-dir, --conf-dir or both", file=sys.stderr)
        return 2
    if args.conflist and not args.conf_dir:
        print("install-cni: --conflist needs --conf-dir", file=sys.stderr)
        return 2
    chosen: list[str] = []
    try:
        written = install_cni(
            bin_dir=Path(args.bin_dir) if args.bin_dir else None,
            conf_dir=Path(args.conf_dir) if args.conf_dir else None,
            python=args.python,
            force=args.force,
            host_bin_dir=Path(args.host_bin_dir) if args.host_bin_dir else None,
            host_root=Path(args.host_root),
            conflist=Path(args.conflist) if args.conflist else None,
            chosen=chosen,
        )
    except (OSError, BundleError) as exc:
        print(f"install-cni: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"installed {path}")
    for used in chosen:
        print(f"the plugin runs with {used}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``install-cni`` to flannelctl."""
    parser = subparsers.add_parser(
        "install-cni", help="install the flannel CNI plugin and its conflist"
    )
    parser.add_argument("--bin-dir", help="CNI plugin directory, e.g. /opt/cni/bin")
    parser.add_argument(
        "--host-bin-dir", help="where --bin-dir is on the node (default: --bin-dir)"
    )
    parser.add_argument(
        "--python",
        default="auto",
        help=f"auto (node's python3 if >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}, else bundled), bundled, "
        "or a node path",
    )
    parser.add_argument(
        "--host-root", default="/", help="where the node's /usr is mounted (default /)"
    )
    parser.add_argument("--conf-dir", help="CNI config directory, e.g. /etc/cni/net.d")
    parser.add_argument("--conflist", help="conflist to install (always replaces, atomically)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing conflist")
    parser.set_defaults(func=_handler)
