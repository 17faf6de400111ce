"""``flannelctl install-cni``: the launcher (node python3 or a bundled interpreter) and the conflist.

The bundled path is proven on a node without python: the plugin runs inside a mount namespace of
the test's own in which every python on this machine is hidden behind empty bind mounts, and a real
CNI ADD/DEL through bridge + host-local must work there.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cni_helpers import SYSTEM_CNI, V4_ENV

from flannel.cni.install import (
    CONFLIST_NAME,
    LIB_DIR_NAME,
    host_python_version,
    install_cni,
    register,
)
from flannel.cni.install_runtime import launcher_elf, read_elf
from flannel.cni.runtime import exec_plugin

pytestmark = pytest.mark.cni

ELF_MAGIC = b"\x7fELF"


def _run_launcher(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(path)], env=env, capture_output=True, text=True, check=False)


def _shebang(path: Path) -> list[str]:
    return path.read_text().splitlines()[0][2:].split()


def _is_elf(path: Path) -> bool:
    return path.read_bytes()[:4] == ELF_MAGIC


# ---- the node's own python3 ---------------------------------------------------------------------


def test_launcher_uses_a_fixed_interpreter_with_isolated_no_site_flags(tmp_path: Path) -> None:
    install_cni(bin_dir=tmp_path / "bin", conf_dir=tmp_path / "net.d")
    launcher = tmp_path / "bin" / "flannel"
    assert launcher.read_text().splitlines()[0] == "#!/usr/bin/python3 -IS"
    assert os.access(launcher, os.X_OK)
    done = _run_launcher(launcher, {"CNI_COMMAND": "VERSION"})
    assert done.returncode == 0
    assert json.loads(done.stdout)["cniVersion"] == "1.1.0"


def test_launcher_never_imports_site_or_json_for_version(tmp_path: Path) -> None:
    install_cni(bin_dir=tmp_path)
    done = subprocess.run(
        [*_shebang(tmp_path / "flannel"), "-X", "importtime", str(tmp_path / "flannel")],
        env={"CNI_COMMAND": "VERSION"},
        capture_output=True,
        text=True,
        check=False,
    )
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
    assert "flannel.cni.plugin" in imported
    assert not {"site", "json", "subprocess", "ipaddress"} & imported


def test_ipv4_add_path_imports_no_json_re_typing_dataclasses_or_ipaddress(tmp_path: Path) -> None:
    install_cni(bin_dir=tmp_path / "bin")
    (tmp_path / "subnet.env").write_text(V4_ENV)
    conf = {"name": "n", "subnetFile": str(tmp_path / "subnet.env"), "dataDir": str(tmp_path / "d")}
    launcher = tmp_path / "bin" / "flannel"
    done = subprocess.run(
        [*_shebang(launcher), "-X", "importtime", str(launcher)],
        input=json.dumps(conf),
        env={
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c1",
            "CNI_NETNS": "/run/netns/none",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(tmp_path / "empty"),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(done.stdout)["msg"].startswith(
        "failed to delegate add: failed to find plugin"
    )
    assert (tmp_path / "d" / "c1").exists()  # the whole ADD path up to the exec ran
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "flannel.cni.commands" in imported
    assert not {"json", "re", "typing", "dataclasses", "ipaddress", "subprocess"} & imported


def test_an_explicit_host_interpreter_is_used_even_when_absent_here(tmp_path: Path) -> None:
    """In an init container the node's python3 is not visible: install the launcher anyway."""
    host_python = "/nonexistent/host/python3"
    install_cni(bin_dir=tmp_path / "bin", python=host_python)
    launcher = (tmp_path / "bin" / "flannel").read_text()
    assert launcher.startswith(f"#!{host_python} -IS\n")
    assert (tmp_path / "bin" / LIB_DIR_NAME / "flannel" / "cni" / "plugin.py").exists()


def test_launchers_carry_the_node_path_of_the_bin_dir_not_the_containers(tmp_path: Path) -> None:
    install_cni(bin_dir=tmp_path / "mnt", host_bin_dir=Path("/var/lib/k3s/bin"))
    text = (tmp_path / "mnt" / "flannel").read_text()
    assert "sys.path.insert(0, '/var/lib/k3s/bin/.pyflannel-cni')" in text
    assert str(tmp_path) not in text


# ---- choosing between the node's python and the bundled one -------------------------------------


def _fake_node(root: Path, *, link: str | None, version: str = "3.11", stdlib: bool = True) -> Path:
    """A node's /usr as a DaemonSet mounts it: usr/bin/python3 -> <link>, usr/lib/pythonX.Y."""
    (root / "usr" / "bin").mkdir(parents=True)
    real = root / "usr" / "bin" / f"python{version}"
    real.write_bytes(b"\x7fELF not really")
    if link is not None:
        (root / "usr" / "bin" / "python3").symlink_to(link)
    if stdlib:
        (root / "usr" / "lib" / f"python{version}").mkdir(parents=True)
        (root / "usr" / "lib" / f"python{version}" / "os.py").write_text("")
    return root


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ({"link": "python3.11"}, (3, 11)),
        ({"link": "/usr/bin/python3.11"}, (3, 11)),  # absolute targets stay inside the root
        ({"link": "python3.6", "version": "3.6"}, (3, 6)),
        ({"link": None}, None),
        ({"link": "python3.99"}, None),  # dangling
        ({"link": "python3.11", "stdlib": False}, None),
    ],
)
def test_the_node_python_version_is_read_through_a_mounted_root(
    tmp_path: Path, case: dict[str, object], expected: tuple[int, int] | None
) -> None:
    root = _fake_node(tmp_path / "host", **case)  # type: ignore[arg-type]
    assert host_python_version(root) == expected


def test_auto_uses_a_recent_node_python_and_bundles_for_an_old_one(tmp_path: Path) -> None:
    recent = _fake_node(tmp_path / "recent", link="python3.11")
    install_cni(bin_dir=tmp_path / "a", python="auto", host_root=recent)
    assert (tmp_path / "a" / "flannel").read_text().startswith("#!/usr/bin/python3 -IS\n")
    old = _fake_node(tmp_path / "old", link="python3.6", version="3.6")
    install_cni(bin_dir=tmp_path / "b", python="auto", host_root=old)
    assert _is_elf(tmp_path / "b" / "flannel")


def _python36(tmp: Path) -> Path:
    """A real 3.6 where this machine's image has one (pyenv), else a stand-in that answers as one."""
    real = Path.home() / ".pyenv" / "versions" / "3.6.15" / "bin" / "python3.6"
    if real.exists():
        return real
    stand_in = tmp / "python3.6"
    stand_in.write_text("#!/bin/sh\necho 3 6\n")
    stand_in.chmod(0o755)
    return stand_in


def test_auto_on_a_node_whose_python3_is_3_6_installs_the_bundled_interpreter(
    tmp_path: Path,
) -> None:
    """The node's python3 answers the version probe as 3.6, inside our own mount namespace."""
    old = _python36(tmp_path)
    code = (
        "import sys; from pathlib import Path; from flannel.cni.install import install_cni; "
        "install_cni(bin_dir=Path(sys.argv[1]))"
    )
    target = os.path.realpath("/usr/bin/python3")
    script = f'mount --bind {old} {target} && exec "$@"'
    out = tmp_path / "bin"
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-c", code, str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _is_elf(out / "flannel")
    assert os.path.realpath("/usr/bin/python3").endswith("python3.11")  # host untouched


# ---- the bundled interpreter --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bin_dir = tmp_path_factory.mktemp("cni-bundled")
    install_cni(bin_dir=bin_dir, python="bundled")
    return bin_dir


def _pythons_hidden(tmp: Path) -> str:
    """A wrapper that execs its argument with every python of this machine hidden (mount ns)."""
    empty_dir, empty_file = tmp / "empty-dir", tmp / "empty-file"
    empty_dir.mkdir(exist_ok=True)
    empty_file.write_text("")
    hide = [f"mount --bind {empty_file} {os.path.realpath('/usr/bin/python3')}"]
    prefixes = {Path(sys.base_prefix), Path(sys.prefix), Path.home() / ".pyenv"}
    # deepest first: a bind over a parent would hide the mount point of its child
    hide += [f"mount --bind {empty_dir} {p}" for p in sorted(prefixes, reverse=True) if p.is_dir()]
    hide += [f"mount --bind {empty_dir} {p}" for p in sorted(Path("/usr/lib").glob("python3*"))]
    wrapper = tmp / "no-python"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec unshare -m sh -c '{' && '.join(hide)} && "
        "if /usr/bin/python3 -c pass 2>/dev/null; then echo python visible >&2; exit 99; fi && "
        'exec "$0" "$@"\' "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture
def netns_pair() -> Iterator[tuple[str, str]]:
    host, ctr = f"pfi-h{secrets.token_hex(3)}", f"pfi-c{secrets.token_hex(3)}"
    try:
        for name in (host, ctr):
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        subprocess.run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
        yield host, ctr
    finally:
        for name in (host, ctr):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_the_bundled_launcher_is_an_elf_that_runs_the_bundled_loader(bundled: Path) -> None:
    launcher = bundled / "flannel"
    assert _is_elf(launcher)
    assert read_elf(launcher).interpreter is None  # static: needs nothing from the node
    [runtime] = (bundled / LIB_DIR_NAME).glob("python3.*-*")
    loader = read_elf(Path(sys.executable).resolve()).interpreter
    assert loader is not None
    assert (runtime / "lib" / Path(loader).name).is_file()
    assert (runtime / "lib" / "python3.11" / "json" / "decoder.py").is_file()
    done = _run_launcher(launcher, {"CNI_COMMAND": "VERSION"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cniVersion"] == "1.1.0"


def test_the_bundled_plugin_adds_and_deletes_a_pod_on_a_node_without_python(
    bundled: Path, tmp_path: Path, netns_pair: tuple[str, str]
) -> None:
    host, ctr = netns_pair
    wrapper = _pythons_hidden(tmp_path)
    visible = subprocess.run([wrapper, "/bin/true"], capture_output=True, text=True, check=False)
    assert visible.returncode == 0, visible.stderr  # the wrapper really hides python
    hidden = subprocess.run(
        [wrapper, "/usr/bin/python3", "-c", "pass"], capture_output=True, check=False
    )
    assert hidden.returncode != 0
    (tmp_path / "subnet.env").write_text(V4_ENV)
    conf = {
        "cniVersion": "1.0.0",
        "name": "cni-flannel",
        "type": "flannel",
        "subnetFile": str(tmp_path / "subnet.env"),
        "dataDir": str(tmp_path / "data"),
        "ipam": {"dataDir": str(tmp_path / "ipam")},
    }
    env = {
        "CNI_CONTAINERID": "ctr1",
        "CNI_NETNS": f"/run/netns/{ctr}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": f"{bundled}:{SYSTEM_CNI}",
    }
    plugin = [wrapper, str(bundled / "flannel")]
    rc, out, err = _exec(plugin, "ADD", conf, env, host)
    assert rc == 0, f"ADD failed: {out} {err}"
    [ip] = [i["address"] for i in json.loads(out)["ips"]]
    assert ip.startswith("10.1.17.")
    addrs = subprocess.run(
        ["ip", "-n", ctr, "-j", "addr", "show", "eth0"], capture_output=True, text=True, check=True
    ).stdout
    assert ip.split("/")[0] in addrs
    rc, out, err = _exec(plugin, "DEL", conf, env, host)
    assert rc == 0, f"DEL failed: {out} {err}"
    gone = subprocess.run(["ip", "-n", ctr, "link", "show", "eth0"], capture_output=True)
    assert gone.returncode != 0
    assert not (tmp_path / "data" / "ctr1").exists()


def _exec(
    plugin: list[str], command: str, conf: dict[str, object], env: dict[str, str], netns: str
) -> tuple[int, str, str]:
    """exec_plugin takes one path: give it a one-line script that runs ``plugin`` (wrapped)."""
    runner = Path(plugin[0]).with_name("run-plugin")
    runner.write_text("#!/bin/sh\nexec " + " ".join(plugin) + "\n")
    runner.chmod(0o755)
    return exec_plugin(str(runner), command, conf, env, netns=netns)


def test_a_launcher_whose_runtime_is_gone_prints_a_cni_error(tmp_path: Path) -> None:
    install_cni(bin_dir=tmp_path, python="bundled")
    [runtime] = (tmp_path / LIB_DIR_NAME).glob("python3.*-*")
    runtime.rename(tmp_path / "moved")
    done = _run_launcher(tmp_path / "flannel", {"CNI_COMMAND": "VERSION"})
    assert done.returncode == 127
    error = json.loads(done.stdout)
    assert error["code"] == 999
    assert f"cannot execute {runtime}/lib/" in error["msg"]


def test_reinstalling_replaces_an_older_runtime_and_keeps_a_current_one(tmp_path: Path) -> None:
    install_cni(bin_dir=tmp_path, python="bundled")
    [current] = (tmp_path / LIB_DIR_NAME).glob("python3.*-*")
    stale = tmp_path / LIB_DIR_NAME / "python3.10-000000000000"
    stale.mkdir()
    install_cni(bin_dir=tmp_path, python="bundled")
    assert list((tmp_path / LIB_DIR_NAME).glob("python3.*-*")) == [current]


@pytest.mark.parametrize(("machine", "name"), [(62, "x86-64"), (183, "aarch64")])
def test_the_launcher_elf_points_execve_at_its_argv(machine: int, name: str) -> None:
    """The code reads four words at 0x4000f8; they must point at the argv and the message."""
    argv = ["/n/lib/ld-linux.so", "--library-path", "/n/lib", "/n/bin/python3.11", "-IS", "/n/l.py"]
    elf = launcher_elf(machine, argv, "oops\n")
    assert elf[:4] == ELF_MAGIC and struct.unpack_from("<H", elf, 18)[0] == machine
    entry = struct.unpack_from("<Q", elf, 24)[0]
    assert entry == 0x400000 + 120
    filesz = struct.unpack_from("<Q", elf, 64 + 32)[0]
    assert filesz == len(elf)

    def cstring(addr: int) -> str:
        off = addr - 0x400000
        return elf[off : elf.index(b"\0", off)].decode()

    path_ptr, argv_ptr, msg_ptr, msg_len = struct.unpack_from("<QQQQ", elf, 0xF8)
    assert cstring(path_ptr) == argv[0]
    pointers = struct.unpack_from(f"<{len(argv) + 1}Q", elf, argv_ptr - 0x400000)
    assert [cstring(p) for p in pointers[:-1]] == argv and pointers[-1] == 0
    assert elf[msg_ptr - 0x400000 :][:msg_len] == b"oops\n"


def test_an_unsupported_architecture_is_refused_with_the_fix() -> None:
    with pytest.raises(OSError, match="install python3 on the node and pass --python PATH"):
        launcher_elf(243, ["/x"], "e")  # riscv


# ---- modes and the conflist ---------------------------------------------------------------------


@pytest.mark.parametrize("python", ["auto", "bundled"])
def test_under_umask_000_nothing_installed_is_group_or_world_writable(
    tmp_path: Path, python: str
) -> None:
    """The runtime execs these files as root: a writable one would be a root backdoor."""
    old = os.umask(0)
    try:
        install_cni(
            bin_dir=tmp_path / "opt" / "cni" / "bin", conf_dir=tmp_path / "net.d", python=python
        )
    finally:
        os.umask(old)
    checked = 0
    for path in [
        tmp_path / "opt",
        *(tmp_path / "opt").rglob("*"),
        *(tmp_path / "net.d").rglob("*"),
    ]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        assert not mode & (stat.S_IWGRP | stat.S_IWOTH), f"{path} is {stat.filemode(mode)}"
        checked += 1
    assert checked > 10
    assert stat.S_IMODE((tmp_path / "opt" / "cni" / "bin" / LIB_DIR_NAME).stat().st_mode) == 0o755


def test_conflist_is_the_standard_kube_flannel_one_and_kept_unless_forced(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    install_cni(bin_dir=tmp_path / "bin", conf_dir=conf_dir)
    conflist = json.loads((conf_dir / CONFLIST_NAME).read_text())
    assert conflist == {
        "name": "cbr0",
        "cniVersion": "0.3.1",
        "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (conf_dir / CONFLIST_NAME).write_text("{}")
    install_cni(bin_dir=tmp_path / "bin", conf_dir=conf_dir)
    assert (conf_dir / CONFLIST_NAME).read_text() == "{}"
    install_cni(bin_dir=tmp_path / "bin", conf_dir=conf_dir, force=True)
    assert json.loads((conf_dir / CONFLIST_NAME).read_text())["name"] == "cbr0"


def test_a_conflist_file_is_checked_then_renamed_over_the_old_one(tmp_path: Path) -> None:
    """The runtime may read the file at any moment: it sees the old one whole or the new one."""
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    target = conf_dir / CONFLIST_NAME
    target.write_text('{"old": true, "plugins": []}')
    reader = target.open("rb")  # a runtime that opened the old file mid-update
    source = tmp_path / "cni-conf.json"
    source.write_text('{"name": "cbr0", "plugins": [{"type": "flannel"}]}')
    install_cni(conf_dir=conf_dir, conflist=source)
    assert target.read_text() == source.read_text()
    assert reader.read() == b'{"old": true, "plugins": []}'  # old inode intact: a rename
    reader.close()
    assert sorted(p.name for p in conf_dir.iterdir()) == [CONFLIST_NAME]  # no temp file left
    source.write_text('{"name": "cbr0", "plugins": [')  # a broken ConfigMap
    with pytest.raises(OSError, match=rf"--conflist {source}: not a readable JSON file"):
        install_cni(conf_dir=conf_dir, conflist=source)
    assert json.loads(target.read_text())["name"] == "cbr0"  # the node keeps a working conflist


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["install-cni", *argv])
    code: int = args.func(args)
    return code


def test_cli_reports_an_unwritable_bin_dir_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert _cli("--bin-dir", str(blocker / "bin")) == 1


def test_cli_needs_a_bin_dir_or_a_conf_dir_and_a_conf_dir_for_a_conflist(tmp_path: Path) -> None:
    assert _cli() == 2
    assert _cli("--bin-dir", str(tmp_path), "--conflist", str(tmp_path / "x")) == 2
    assert _cli("--bin-dir", str(tmp_path / "b"), "--python", "python3") == 1  # not absolute
    assert not (tmp_path / "b").exists()  # refused before anything was written
