"""pyflannel: flannel, the overlay network for Kubernetes, rebuilt in Python.

Wire-compatible with upstream flannel (keys, lease JSON, annotations, subnet.env, device and chain
names), so Go and Python nodes can share one cluster.
"""

__version__ = "0.1.0"
