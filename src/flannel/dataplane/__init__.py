"""Kernel state: frozen objects, a pure plan, the netlink adapter and the reconciler."""
