"""The wireguard backend (upstream pkg/backend/wireguard): encrypted overlay over WireGuard.

Kernel WireGuard is driven through generic netlink where the ``wireguard`` link type exists; elsewhere
flanneld runs and supervises ``wireguard-go`` and configures it through the userspace API socket.
Either way the peers are desired state, reconciled like routes.
"""
