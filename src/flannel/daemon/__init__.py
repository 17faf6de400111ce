"""The flanneld daemon: startup sequence, supervision, health server, lease keeping."""
