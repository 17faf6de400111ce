"""Masquerade and forward rules: pure rule generation, iptables and nftables appliers."""
