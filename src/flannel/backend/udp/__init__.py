"""The udp backend (upstream pkg/backend/udp): ``flannel0`` over TUN, raw IPv4 in UDP on port 8285.

Kept empty on purpose: the forwarder process imports ``flannel.backend.udp.forwarder`` through this
package, and every import here would cost memory in that process (its budget is 20 MiB).
"""
