"""Pure model of flannel: config, leases, subnet keys, allocation, subnet.env.

PURE: nothing in this package does I/O. No asyncio, sockets, subprocess or file access; a unit test
proves it imports no such modules. Everything here is table-driven testable.
"""
