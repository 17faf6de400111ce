"""A self-contained Python for the CNI plugin on nodes whose own python3 is missing or too old.

Flatcar, Talos, Bottlerocket and COS ship no usable ``/usr/bin/python3`` (some ship 3.6), yet the
container runtime execs the plugin on the node itself. So ``install-cni`` copies the interpreter
that runs it (the image's), the shared libraries it and the needed extension modules link (as the
ELF's own dynamic loader resolves them: ``ld.so --list``), the loader itself and the stdlib modules
the plugin imports, into one directory under the plugin's, and writes a tiny static ELF launcher
that runs ``<loader> --library-path <lib> <python> -IS <script>``. Nothing on the node is used
except the kernel: no host loader, libc, shell or python.

A shebang cannot carry that command line (Linux passes one argument), and some of these OSes have
no shell, hence the launcher is machine code of our own (one ``execve``; on failure it prints a CNI
error and exits 127), for the architectures whose encodings are below.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

_PT_INTERP = 3
_EM_X86_64 = 62
_EM_AARCH64 = 183
# The launcher is loaded at this fixed address; its data block sits at a fixed offset so the code
# never changes: four words (loader path, argv array, error message, message length) at DATA.
_BASE = 0x400000
_CODE_OFF = 64 + 56  # ELF header + one program header
_DATA_OFF = 0xF8
# x86-64: rdx = envp; execve([DATA], [DATA+8], envp); write(1, [DATA+16], [DATA+24]); exit_group(127)
_CODE_X86_64 = bytes.fromhex(
    "488b0c24488d54cc10488b3c25f8004000488b342500014000b83b0000000f05"
    "bf01000000488b342508014000488b142510014000b8010000000f05"
    "bf7f000000b8e70000000f05"
)
# aarch64: the same with x2 = envp, literals loaded PC-relative, svc #0 (221 execve, 64 write, 94)
_CODE_AARCH64 = bytes.fromhex(
    "e30340f9e4030091820c038b4240009180030058a1030058a81b80d2010000d4"
    "200080d26103005882030058080880d2010000d4e00f80d2c80b80d2010000d4"
)
_CODE = {_EM_X86_64: _CODE_X86_64, _EM_AARCH64: _CODE_AARCH64}


class BundleError(OSError):
    """The interpreter cannot be bundled (unsupported architecture, unreadable ELF, ...)."""


@dataclass(frozen=True, slots=True)
class ElfInfo:
    """What the bundler needs from an ELF executable: its machine and its dynamic loader."""

    machine: int
    interpreter: str | None


def read_elf(path: Path) -> ElfInfo:
    """Machine and PT_INTERP of a 64-bit little-endian ELF (the only kind the launcher supports)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BundleError(f"{path} is not a 64-bit little-endian ELF executable")
    machine = struct.unpack_from("<H", data, 18)[0]
    phoff, phentsize, phnum = (
        struct.unpack_from("<Q", data, 32)[0],
        *struct.unpack_from("<HH", data, 54),
    )
    for i in range(phnum):
        p_type, _flags, offset, _vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == _PT_INTERP:
            raw = data[offset : offset + filesz].rstrip(b"\0")
            return ElfInfo(machine, raw.decode())
    return ElfInfo(machine, None)


def shared_libraries(loader: str, path: Path) -> dict[str, Path]:
    """Soname → file of every library ``path`` needs, as its own loader resolves them (``--list``).

    The loader's own ``--list`` is what ``ldd`` runs underneath; calling it directly needs no shell.
    """
    done = subprocess.run(
        [loader, "--list", str(path)], capture_output=True, text=True, check=False, timeout=30
    )
    if done.returncode != 0:
        raise BundleError(f"{loader} --list {path} failed: {done.stderr.strip()}")
    libs: dict[str, Path] = {}
    for line in done.stdout.splitlines():
        name, sep, rest = line.strip().partition(" => ")
        if not sep:
            continue  # the vdso and the loader itself
        target = rest.split(" (", 1)[0].strip()
        if target == "not found":
            raise BundleError(f"{path} needs {name}, which its loader cannot find")
        libs[name] = Path(target)
    return libs


def launcher_elf(machine: int, argv: list[str], error: str) -> bytes:
    """A static ELF that execs ``argv`` (argv[0] is the program) with the caller's environment."""
    code = _CODE.get(machine)
    if code is None:
        raise BundleError(
            f"no self-contained launcher for ELF machine {machine} (x86-64 and aarch64 are "
            "supported): install python3 on the node and pass --python PATH"
        )
    strings = b"".join(s.encode() + b"\0" for s in [*argv, error])
    argv_off = _DATA_OFF + 32
    str_off = argv_off + 8 * (len(argv) + 1)
    pointers, cursor = [], _BASE + str_off
    for s in argv:
        pointers.append(cursor)
        cursor += len(s.encode()) + 1
    data = struct.pack(
        "<QQQQ", _BASE + str_off, _BASE + argv_off, cursor, len(error.encode())
    ) + struct.pack(f"<{len(argv) + 1}Q", *pointers, 0)
    size = str_off + len(strings)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header += struct.pack(
        "<HHIQQQIHHHHHH", 2, machine, 1, _BASE + _CODE_OFF, 64, 0, 0, 64, 56, 1, 0, 0, 0
    )
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)
    body = code.ljust(_DATA_OFF - _CODE_OFF, b"\0")
    return header + program + body + data + strings


def imported_names(entry: Path) -> tuple[set[str], set[str]]:
    """Module names imported by ``entry`` and the flannel.cni modules it imports, at any depth.

    Returns (modules, candidates): ``from m import n`` makes ``m`` a module and ``m.n`` a candidate
    (a submodule, or just a name in ``m``). Local modules are followed, lazy imports count.
    """
    modules: set[str] = set()
    candidates: set[str] = set()
    pending, seen = [entry], set()
    while pending:
        source = pending.pop()
        seen.add(source)
        for node in ast.walk(ast.parse(source.read_bytes(), str(source))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found = [node.module]
                subs = [f"{node.module}.{alias.name}" for alias in node.names]
                candidates.update(subs)
                found += [sub for sub in subs if sub.startswith("flannel.cni.")]
            else:
                continue
            for name in found:
                local = entry.parent / f"{name.rpartition('.')[2]}.py"
                if not name.startswith("flannel"):
                    modules.add(name)
                elif name.startswith("flannel.cni.") and local.is_file() and local not in seen:
                    pending.append(local)
                    seen.add(local)
    return modules, {c for c in candidates if not c.startswith("flannel")}


_REPORT = """
import sys
split = sys.argv.index("--")
for name in sys.argv[1:split]:
    __import__(name)
for name in sys.argv[split + 1:]:
    try:
        __import__(name)
    except ImportError:
        pass
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if path:
        print(path)
"""


def needed_modules(entry: Path) -> list[Path]:
    """The stdlib files (``.py`` and extension modules) the plugin's imports load.

    A fresh isolated interpreter imports what the plugin's sources name and reports every file
    that came in: the closure the plugin reaches, without the long tail a static finder drags in
    (the ``__main__`` blocks of half the stdlib). ``encodings`` comes whole: the locale picks the
    codec at start-up.
    """
    modules, candidates = imported_names(entry)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _REPORT, *sorted(modules), "--", *sorted(candidates)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise BundleError(f"cannot import the plugin's modules: {done.stderr.strip()[-300:]}")
    stdlib, dynload = _stdlib_dirs()
    files = {Path(line).resolve() for line in done.stdout.splitlines()}
    files |= set((stdlib / "encodings").glob("*.py"))
    files |= {stdlib / "os.py"}  # the landmark that tells the interpreter where its prefix is
    return sorted(f for f in files if f.is_relative_to(stdlib) or f.is_relative_to(dynload))


def _stdlib_dirs() -> tuple[Path, Path]:
    paths = sysconfig.get_paths()
    return Path(paths["stdlib"]).resolve(), Path(paths["platstdlib"]).resolve() / "lib-dynload"


def make_dirs(path: Path) -> None:
    """Create ``path`` and missing parents with mode 0755 whatever the umask.

    The tree holds code the container runtime executes as root: a umask of 000 must never leave
    it world-writable.
    """
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir()
        os.chmod(directory, 0o755)


def _copy(src: Path, dst: Path, mode: int) -> None:
    make_dirs(dst.parent)
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)


@dataclass(frozen=True, slots=True)
class Runtime:
    """A bundled interpreter: where it is (as installed here), its loader and its machine."""

    root: Path
    loader: Path
    python: Path
    lib: Path
    machine: int

    def command(self, host_base: Path) -> list[str]:
        """The argv that starts it, with paths as the node sees them (``host_base`` = our base)."""
        host = host_base / self.root.name
        return [
            str(host / self.loader.relative_to(self.root)),
            "--library-path",
            str(host / self.lib.relative_to(self.root)),
            str(host / self.python.relative_to(self.root)),
            "-IS",
        ]


def bundle_runtime(*, base: Path, entry: Path) -> Runtime:
    """Copy this interpreter, its libraries and the needed stdlib under ``base`` (idempotent).

    The directory name carries a digest of everything copied, it is built under a temporary name
    and renamed into place, so a plugin exec in flight keeps the complete old runtime.
    """
    python = Path(os.path.realpath(sys.executable))
    elf = read_elf(python)
    if elf.interpreter is None:
        raise BundleError(f"{python} has no dynamic loader (PT_INTERP); cannot bundle it")
    loader = Path(os.path.realpath(elf.interpreter))
    libs = shared_libraries(elf.interpreter, python)
    modules = needed_modules(entry)
    _stdlib, dynload = _stdlib_dirs()
    for ext in (m for m in modules if m.is_relative_to(dynload)):
        libs.update(shared_libraries(elf.interpreter, ext))
    digest = hashlib.sha256()
    for f in [python, loader, *libs.values(), *modules]:
        digest.update(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}\n".encode())
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    name = f"python{version}-{digest.hexdigest()[:12]}"
    final = base / name
    runtime = Runtime(
        root=final,
        loader=final / "lib" / Path(elf.interpreter).name,
        python=final / "bin" / f"python{version}",
        lib=final / "lib",
        machine=elf.machine,
    )
    if (final / ".complete").exists():
        return runtime
    make_dirs(base)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=base))
    try:
        _fill(work, python, loader, libs, modules, version, elf.interpreter)
        os.chmod(work, 0o755)
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return runtime


def _fill(
    work: Path,
    python: Path,
    loader: Path,
    libs: dict[str, Path],
    modules: list[Path],
    version: str,
    interp: str,
) -> None:
    stdlib, dynload = _stdlib_dirs()
    pylib = work / "lib" / f"python{version}"
    _copy(python, work / "bin" / f"python{version}", 0o755)
    _copy(loader, work / "lib" / Path(interp).name, 0o755)
    for soname, path in libs.items():
        _copy(path, work / "lib" / soname, 0o755)
    for module in modules:
        if module.is_relative_to(dynload):
            _copy(module, pylib / "lib-dynload" / module.relative_to(dynload), 0o755)
        else:
            _copy(module, pylib / module.relative_to(stdlib), 0o644)
    make_dirs(pylib / "lib-dynload")  # exec_prefix landmark, even with no extension module
    (work / ".complete").write_bytes(b"")
    os.chmod(work / ".complete", 0o644)


def prune_runtimes(base: Path, keep: Path) -> None:
    """Remove runtimes of earlier installs (not the one the new launcher uses)."""
    for old in base.glob("python*-*"):
        if old.is_dir() and old != keep:
            shutil.rmtree(old, ignore_errors=True)
