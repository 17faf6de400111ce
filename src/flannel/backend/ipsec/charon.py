"""Finding, configuring and supervising strongSwan's ``charon`` for the ipsec backend.

Upstream execs the first ``charon`` of a fixed search list as its child and talks to
``/var/run/charon.vici``. pyflannel runs it as a supervised ``HelperProcess`` (detached, pid file,
log forwarded, restarted with backoff, adopted by the next flanneld so SAs survive a flanneld
restart) with a config file of its own (``STRONGSWAN_CONF``): only the plugins the backend needs,
no routes installed (the XFRM policies are flanneld's), logs on stderr. With a private run
directory (the lab, tests: ``FLANNEL_IPSEC_RUN_DIR``) charon runs with that directory bound over
/run, so its ``charon.pid`` and ``charon.vici`` are the node's own and never the host's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from flannel.backend.helperproc import HelperProcess
from flannel.errors import BackendError

CHARON_PATHS = (
    "charon",  # PATH
    "/usr/lib/strongswan/charon",  # alpine, arch, flannel's container image
    "/usr/lib/ipsec/charon",  # debian/ubuntu
    "/usr/libexec/strongswan/charon",  # centos/rhel
    "/usr/libexec/ipsec/charon",  # opensuse/sles
)
"""Upstream's search list, in its order."""

PLUGINS = (
    "random nonce openssl aes sha1 sha2 hmac kdf gcm pem pkcs1 x509 pubkey "
    "kernel-netlink socket-default vici"
)
CONF_NAME = "flannel-strongswan.conf"


def find_charon(paths: tuple[str, ...] = CHARON_PATHS) -> str:
    """The first executable of upstream's list; BackendError naming every place looked at."""
    for candidate in paths:
        found = shutil.which(candidate)
        if found is not None:
            return found
    raise BackendError(
        f"No valid charon executable found at paths {list(paths)}: install strongSwan "
        "(Debian: apt install strongswan-charon strongswan-swanctl libstrongswan-standard-plugins)"
    )


def strongswan_conf(vici_socket: str) -> str:
    """charon's settings: only what the backend needs, logs on stderr (forwarded by flanneld)."""
    return f"""# written by flanneld (ipsec backend); rewritten at every start
charon {{
  load = {PLUGINS}
  install_routes = no
  install_virtual_ip = no
  retransmit_tries = 3
  filelog {{
    stderr {{
      default = 1
      time_format = %b %e %T
    }}
  }}
  syslog {{
    daemon {{
      default = -1
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{vici_socket}
    }}
  }}
}}
"""


def charon_helper(
    *, charon: str, run_dir: Path, state_dir: Path, private_run: bool, netns: str | None
) -> HelperProcess:
    """The supervised charon of one node; its VICI socket and pid are ``run_dir``'s."""
    inside = Path("/run") if private_run else run_dir
    conf = run_dir / CONF_NAME
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf.write_text(strongswan_conf(str(inside / "charon.vici")))
    os.chmod(conf, 0o600)
    vici_socket = run_dir / "charon.vici"
    return HelperProcess(
        name="charon",
        argv=[charon],
        netns=netns,
        env={"STRONGSWAN_CONF": str(inside / CONF_NAME)},
        private_run=run_dir if private_run else None,
        state_dir=state_dir,
        ready=lambda: _vici_ready(vici_socket),
        ready_timeout=20.0,
    )


def _vici_ready(path: Path) -> bool:
    from flannel.dataplane.ipsecvici import _connect

    try:
        _connect(path).close()
    except OSError:
        return False
    return True
