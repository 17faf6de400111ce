"""``flannelctl doctor``: what is wrong with flannel on this node and in its cluster, and the fix.

Two halves kept apart so the logic is testable without a kernel:

- collectors (``collect_node``, ``collect_store``, ``probes``) do all the I/O — netlink dumps,
  /proc/sys, files, iptables/nft listings, the health endpoints, the datastore, ICMP probes — and
  produce a ``snapshot.Snapshot`` of plain frozen values;
- checks (``checks_*``) are pure functions of that snapshot returning ``findings.Finding`` values:
  an id from ``findings.CATALOG``, a severity, the evidence seen and the fix (text plus, where one
  exists, the exact command).

``run.doctor`` wires both and measures the run; the CLI in ``flannel.cli.doctor`` renders it.
"""
