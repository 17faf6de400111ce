"""Lease stores behind one SubnetManager protocol: etcd v3, Kubernetes API, in-memory."""
