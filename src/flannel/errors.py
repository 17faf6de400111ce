"""The one error tree of pyflannel.

Foreign errors (netlink errno, etcd/gRPC, HTTP, subprocess) are translated once, at the module that
talks to the foreign system, into one of these classes; the original stays reachable as
``__cause__``. Callers above that line only ever catch ``FlannelError`` subclasses, so a log line or an
exit code never depends on which library a failure came from::

    FlannelError
    ├── ConfigError               net-conf.json / <prefix>/config missing or invalid (retried)
    │   └── BackendConfigError    a Backend field is invalid (also a BackendError)
    ├── FlagError                 a flag / FLANNELD_* variable is invalid (exit 2)
    ├── MalformedLeaseError       a subnet key or lease value cannot be decoded (skipped alone)
    ├── DatastoreError            etcd / Kubernetes API failed or unreachable
    │   ├── SubnetConflictError   lost the subnet create race
    │   ├── OutOfSubnetsError     no free subnet left
    │   ├── EtcdCompactedError    watch revision compacted: re-list (subnet/etcd_client.py)
    │   ├── AccessDeniedError     401/403 from the Kubernetes API
    │   └── GoneError             410: watch resourceVersion too old, re-list
    ├── LeaseRevokedError         our own lease is gone: clean exit 0, kernel left as it is
    ├── InterfaceError            no usable external interface
    ├── KernelError               a netlink/kernel operation failed (object and errno named)
    ├── BackendError              a backend cannot register or program a peer
    │   └── BackendConfigError
    ├── TrafficError              iptables / nftables rules could not be installed
    └── LabError                  building/checking/tearing down a lab failed
        └── LabPrereqError        the machine cannot run a lab (exit 2)

Not in the tree on purpose: module-private signals that never leave their module (e.g.
``rtnl.DumpInterrupted`` retried by the reader, the etcd client's channel-closed/silent-watch
signals, the CNI plugin's ``CniError``, which is the CNI wire error and must stay stdlib-only).
"""

from __future__ import annotations


class FlannelError(Exception):
    """Base of every error pyflannel raises on purpose."""


class ConfigError(FlannelError):
    """The network configuration (net-conf.json / <prefix>/config) is missing or invalid."""


class FlagError(FlannelError):
    """A command-line flag or FLANNELD_* variable has a bad value; the message names it."""


class MalformedLeaseError(FlannelError):
    """A subnet key or lease value in the datastore cannot be decoded."""


class DatastoreError(FlannelError):
    """The datastore (etcd or the Kubernetes API) failed or could not be reached."""


class SubnetConflictError(DatastoreError):
    """Another node created the same subnet key first (lost create race)."""


class OutOfSubnetsError(DatastoreError):
    """No free subnet is left in the configured range."""


class AccessDeniedError(DatastoreError):
    """401/403: retrying will not help until credentials or RBAC are fixed."""


class GoneError(DatastoreError):
    """The watch's resourceVersion is older than the server keeps (410): re-list."""


class LeaseRevokedError(FlannelError):
    """Our own lease was deleted or expired in the datastore; the daemon must exit cleanly (0)."""


class InterfaceError(FlannelError):
    """No usable external interface could be selected; the message lists what exists."""


class KernelError(FlannelError):
    """A netlink or kernel operation failed (errno translated, object named in the message)."""


class BackendError(FlannelError):
    """A backend could not register its network or program a peer."""


class BackendConfigError(ConfigError, BackendError):
    """A Backend field of net-conf.json is invalid: a config error (the daemon retries the fetch)
    and a backend error (what a decoder raises), so callers of either kind catch it."""


class TrafficError(FlannelError):
    """iptables / nftables rules could not be installed."""


class LabError(FlannelError):
    """Building, checking or tearing down a lab failed; the message names the step and the fix."""


class LabPrereqError(LabError):
    """The machine cannot run a lab: not root, or a program is missing (the message says what to
    install). The CLI maps it to exit code 2."""
