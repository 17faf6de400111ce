"""nftables scripts for ``nft -f``. PURE: no subprocess, files or asyncio.

Table, chain and rule texts are upstream flannel's (``pkg/trafficmngr/nftables``, via knftables),
so ``nft list`` prints upstream's golden listings. Upstream flushes each chain; we go one step
further and rewrite each flannel table whole (``add``/``delete``/``add`` in one transaction), which
also drops anything someone else put into our tables, atomically.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

Network = IPv4Network | IPv6Network

KUBE_PROXY_MARK = "0x4000"
"""Upstream matches kube-proxy's mark exactly, without the mask iptables uses (upstream quirk)."""

POSTRTG_CHAIN = "postrtg"
FORWARD_CHAIN = "forward"


@dataclass(frozen=True)
class NftChain:
    """A base chain: its name, the ``{ ... }`` declaration and its rules in order."""

    name: str
    declaration: str
    rules: tuple[str, ...]


@dataclass(frozen=True)
class NftTable:
    """One flannel table (``ip flannel-ipv4`` or ``ip6 flannel-ipv6``) with its chains."""

    family: str
    name: str
    chains: tuple[NftChain, ...]

    @property
    def ref(self) -> str:
        """``<family> <name>``, as nft commands name a table."""
        return f"{self.family} {self.name}"

    def script(self) -> str:
        """Commands that replace the table whole (creating it first so the delete cannot fail)."""
        head = f'add table {self.ref} {{ comment "rules for {self.name}" ; }}'
        lines = [head, f"delete table {self.ref}", head]
        for chain in self.chains:
            lines.append(f"add chain {self.ref} {chain.name} {{ {chain.declaration} ; }}")
            lines.extend(f"add rule {self.ref} {chain.name} {rule}" for rule in chain.rules)
        return "".join(line + "\n" for line in lines)


def table_names(version: int) -> tuple[str, str]:
    """(family, table name) flannel uses for an IP version."""
    return ("ip", "flannel-ipv4") if version == 4 else ("ip6", "flannel-ipv6")


def masq_chain(cluster: Network, pod: Network, *, fully_random: bool) -> NftChain:
    """Upstream's ``postrtg`` chain (``addMasqRules``), including its 4th rule that differs from
    iptables (``saddr != <pod>``)."""
    fam = "ip" if cluster.version == 4 else "ip6"
    multicast = "224.0.0.0/4" if cluster.version == 4 else "ff00::/8"
    masq = "masquerade fully-random" if fully_random else "masquerade"
    n, p = str(cluster), str(pod)
    rules = (
        f"meta mark {KUBE_PROXY_MARK} return",
        f"{fam} saddr {p} {fam} daddr {n} return",
        f"{fam} saddr {n} {fam} daddr {p} return",
        f"{fam} saddr != {p} {fam} daddr {n} return",
        f"{fam} saddr {n} {fam} daddr != {multicast} {masq}",
        f"{fam} saddr != {n} {fam} daddr {n} {masq}",
    )
    declaration = (
        "type nat hook postrouting priority srcnat ; "
        'comment "chain to manage traffic masquerading by flannel"'
    )
    return NftChain(POSTRTG_CHAIN, declaration, rules)


def forward_chain(network: Network) -> NftChain:
    """Upstream's ``forward`` chain accepting traffic from and to the flannel network."""
    fam = "ip" if network.version == 4 else "ip6"
    rules = (f"{fam} saddr {network} accept", f"{fam} daddr {network} accept")
    declaration = (
        'type filter hook forward priority filter ; comment "chain to accept flannel traffic"'
    )
    return NftChain(FORWARD_CHAIN, declaration, rules)


def build_table(version: int, chains: Iterable[NftChain]) -> NftTable:
    """The table for ``version`` holding ``chains`` (upstream creates both tables, even empty)."""
    family, name = table_names(version)
    return NftTable(family, name, tuple(chains))


def support_probe_script() -> str:
    """A harmless transaction for ``nft --check``: fails when the kernel lacks nf_tables."""
    family, name = table_names(4)
    return f"add table {family} {name}\n"


def fully_random_probe_script() -> str:
    """Upstream's probe (``utils.go``) for ``masquerade fully-random``, run with ``nft --check``."""
    family, name = table_names(4)
    ref = f"{family} {name}"
    return (
        f"add table {ref}\n"
        f"add chain {ref} masqueradeTest {{ type nat hook postrouting priority srcnat ; }}\n"
        f"add rule {ref} masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random\n"
    )


def delete_tables_script() -> str:
    """Removes both flannel tables when they exist (used when switching to iptables mode)."""
    lines: list[str] = []
    for version in (4, 6):
        family, name = table_names(version)
        lines += [f"add table {family} {name}", f"delete table {family} {name}"]
    return "".join(line + "\n" for line in lines)
