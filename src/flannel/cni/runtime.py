"""A small CNI runtime with libcni semantics: conflist chaining, prevResult, result cache.

Used by the tests and by the lab to create pods exactly as containerd would: plugins are exec'd in
the node's network namespace (``netns``), each list entry gets ``name``/``cniVersion`` injected and
the previous result as ``prevResult``, ``runtimeConfig`` carries the capabilities the plugin
declares, the final ADD result is cached and handed to DEL (in reverse order) and CHECK.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flannel.cni.errors import INTERNAL, CniError
from flannel.cni.invoke import find_in_path


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in (version or "0.1.0").split("."))


def exec_plugin(
    path: str,
    command: str,
    conf: Mapping[str, Any] | bytes,
    env: Mapping[str, str],
    *,
    netns: str | None = None,
    timeout: float = 60,
) -> tuple[int, str, str]:
    """Exec one plugin (optionally inside named netns); returns (rc, stdout, stderr)."""
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    argv = ["ip", "netns", "exec", netns, path] if netns else [path]
    full_env = {**os.environ, **env, "CNI_COMMAND": command}
    proc = subprocess.run(
        argv, input=stdin, env=full_env, capture_output=True, timeout=timeout, check=False
    )
    return (
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


def _error_from(rc: int, stdout: str, stderr: str, plugin: str, command: str) -> CniError:
    try:
        obj = json.loads(stdout)
        if isinstance(obj, dict) and "code" in obj:
            return CniError(
                int(obj["code"]), str(obj.get("msg", "")), str(obj.get("details", "") or "")
            )
    except ValueError:
        pass
    text = stderr.strip() or stdout.strip() or f"exit status {rc}"
    return CniError(INTERNAL, f'plugin type="{plugin}" failed ({command.lower()}): {text}')


class CniRuntime:
    """Run a conflist for containers, as libcni's AddNetworkList/DelNetworkList/CheckNetworkList."""

    def __init__(
        self,
        conflist: Mapping[str, Any],
        *,
        cni_path: Sequence[str],
        cache_dir: Path,
        netns: str | None = None,
    ) -> None:
        self.conflist = dict(conflist)
        self.cni_path = list(cni_path)
        self.cache_dir = Path(cache_dir)
        self.netns = netns
        self.name = str(self.conflist["name"])
        self.version = str(self.conflist.get("cniVersion", ""))

    def _cache_file(self, container_id: str, ifname: str) -> Path:
        return self.cache_dir / "results" / f"{self.name}-{container_id}-{ifname}"

    def _plugin_conf(
        self, plugin: Mapping[str, Any], prev: Any, capability_args: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        conf = dict(plugin)
        conf["name"] = self.name
        conf["cniVersion"] = self.version
        if prev is not None:
            conf["prevResult"] = prev
        caps = plugin.get("capabilities") or {}
        runtime = {k: v for k, v in (capability_args or {}).items() if caps.get(k)}
        if runtime:
            conf["runtimeConfig"] = runtime
        return conf

    def _env(
        self, container_id: str, netns_path: str, ifname: str, cni_args: str
    ) -> dict[str, str]:
        return {
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns_path,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": cni_args,
            "CNI_PATH": os.pathsep.join(self.cni_path),
        }

    def _run(
        self,
        plugin: Mapping[str, Any],
        command: str,
        conf: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> str:
        kind = str(plugin["type"])
        path = find_in_path(kind, self.cni_path)
        rc, out, err = exec_plugin(path, command, conf, env, netns=self.netns)
        if rc != 0:
            raise _error_from(rc, out, err, kind, command)
        return out

    def add(
        self,
        container_id: str,
        netns_path: str,
        ifname: str = "eth0",
        capability_args: Mapping[str, Any] | None = None,
        cni_args: str = "",
    ) -> dict[str, Any]:
        """ADD through every plugin in order; returns and caches the final result."""
        env = self._env(container_id, netns_path, ifname, cni_args)
        prev: Any = None
        for plugin in self.conflist["plugins"]:
            out = self._run(plugin, "ADD", self._plugin_conf(plugin, prev, capability_args), env)
            prev = json.loads(out) if out.strip() else prev
        cache = self._cache_file(container_id, ifname)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"result": prev, "capabilityArgs": capability_args or {}}))
        return dict(prev or {})

    def _cached(self, container_id: str, ifname: str) -> tuple[Any, Mapping[str, Any] | None]:
        cache = self._cache_file(container_id, ifname)
        try:
            data = json.loads(cache.read_text())
        except FileNotFoundError:
            return None, None
        return data.get("result"), data.get("capabilityArgs")

    def delete(
        self,
        container_id: str,
        netns_path: str = "",
        ifname: str = "eth0",
        capability_args: Mapping[str, Any] | None = None,
        cni_args: str = "",
    ) -> None:
        """DEL through the plugins in reverse, with the cached result when the version allows."""
        env = self._env(container_id, netns_path, ifname, cni_args)
        cached, cached_caps = self._cached(container_id, ifname)
        prev = cached if _version_tuple(self.version) >= (0, 4, 0) else None
        caps = capability_args if capability_args is not None else cached_caps
        for plugin in reversed(self.conflist["plugins"]):
            self._run(plugin, "DEL", self._plugin_conf(plugin, prev, caps), env)
        self._cache_file(container_id, ifname).unlink(missing_ok=True)

    def check(
        self, container_id: str, netns_path: str, ifname: str = "eth0", cni_args: str = ""
    ) -> None:
        """CHECK each plugin (≥ 0.4.0, unless disableCheck) with the cached result."""
        if _version_tuple(self.version) < (0, 4, 0) or self.conflist.get("disableCheck"):
            return
        cached, caps = self._cached(container_id, ifname)
        if cached is None:
            raise CniError(INTERNAL, f"no cached result for {container_id}/{ifname}")
        env = self._env(container_id, netns_path, ifname, cni_args)
        for plugin in self.conflist["plugins"]:
            self._run(plugin, "CHECK", self._plugin_conf(plugin, cached, caps), env)

    def status(self) -> None:
        """STATUS each plugin (1.1.0 only)."""
        if _version_tuple(self.version) < (1, 1, 0):
            return
        env = {"CNI_PATH": os.pathsep.join(self.cni_path)}
        for plugin in self.conflist["plugins"]:
            self._run(plugin, "STATUS", self._plugin_conf(plugin, None, None), env)

    def gc(self, valid_attachments: Sequence[Mapping[str, str]]) -> None:
        """GC: DEL cached attachments not in the list, then GC each plugin (1.1.0)."""
        keep = {(a["containerID"], a["ifname"]) for a in valid_attachments}
        results = self.cache_dir / "results"
        for cache in sorted(results.glob(f"{self.name}-*")) if results.exists() else []:
            rest = cache.name[len(self.name) + 1 :]
            container_id, _, ifname = rest.rpartition("-")
            if (container_id, ifname) not in keep:
                self.delete(container_id, "", ifname)
        if _version_tuple(self.version) < (1, 1, 0):
            return
        env = {"CNI_PATH": os.pathsep.join(self.cni_path)}
        for plugin in self.conflist["plugins"]:
            conf = self._plugin_conf(plugin, None, None)
            conf["cni.dev/valid-attachments"] = list(valid_attachments)
            self._run(plugin, "GC", conf, env)
