"""The flannel CNI plugin: a stdlib-only meta-plugin that delegates to bridge + host-local.

The container runtime execs the plugin for every pod, so start-up time is the product: nothing here
may import outside the standard library, and each command imports only what its path needs.
"""
