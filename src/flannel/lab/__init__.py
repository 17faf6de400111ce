"""The lab: a multi-node flannel cluster in network namespaces on one machine."""
