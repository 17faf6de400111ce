"""The one error tree of pyflannel.

Foreign errors (netlink errno, etcd/gRPC, HTTP, subprocess) are translated once, at the module that
talks to the foreign system, into one of these classes; the original stays reachable as
``__cause__``. Callers above that line only ever catch ``FlannelError`` subclasses, so a log line or an
exit code never depends on which library a failure came from.
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


class LeaseRevokedError(FlannelError):
    """Our own lease was deleted or expired in the datastore; the daemon must exit cleanly (0)."""


class InterfaceError(FlannelError):
    """No usable external interface could be selected; the message lists what exists."""


class KernelError(FlannelError):
    """A netlink or kernel operation failed (errno translated, object named in the message)."""


class BackendError(FlannelError):
    """A backend could not register its network or program a peer."""


class TrafficError(FlannelError):
    """iptables / nftables rules could not be installed."""
