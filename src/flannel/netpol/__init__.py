"""Native Kubernetes NetworkPolicy enforcer: a pure compiler to nftables plus a small runner."""
