"""subnet.env: byte-exact render (§6, §9.3) and the godotenv-like read-back (main_test.go)."""

from ipaddress import IPv4Network, IPv6Network

from flannel.model.subnetenv import cidrs, parse_env, parse_previous, render


def test_render_ipv4_only_is_byte_exact() -> None:
    text = render(
        network=IPv4Network("10.5.0.0/16"),
        subnet=IPv4Network("10.5.72.0/24"),
        ipv6_network=None,
        ipv6_subnet=None,
        mtu=1450,
        ip_masq=False,
    )
    assert text == (
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )


def test_render_dual_stack_puts_ipv6_lines_between_subnet_and_mtu() -> None:
    text = render(
        network=IPv4Network("10.5.0.0/16"),
        subnet=IPv4Network("10.5.72.0/24"),
        ipv6_network=IPv6Network("2001:cafe:42::/56"),
        ipv6_subnet=IPv6Network("2001:cafe:42::/64"),
        mtu=1450,
        ip_masq=True,
    )
    assert text.splitlines() == [
        "FLANNEL_NETWORK=10.5.0.0/16",
        "FLANNEL_SUBNET=10.5.72.1/24",
        "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56",
        "FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64",
        "FLANNEL_MTU=1450",
        "FLANNEL_IPMASQ=true",
    ]


def test_invalid_cidrs_are_skipped() -> None:
    assert cidrs("10.244.1.0/24,not-a-cidr,10.244.2.0/24") == [
        IPv4Network("10.244.1.0/24"),
        IPv4Network("10.244.2.0/24"),
    ]
    assert cidrs("fd00::/64,not-a-cidr,fd01::/64") == [
        IPv6Network("fd00::/64"),
        IPv6Network("fd01::/64"),
    ]


def test_previous_subnet_is_read_back_in_network_form() -> None:
    prev = parse_previous(
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n"
        "FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\n"
    )
    assert prev.network == IPv4Network("10.5.0.0/16")
    assert prev.subnet == IPv4Network("10.5.72.0/24")
    assert prev.ipv6_subnet == IPv6Network("2001:cafe:42::/64")
    assert prev.ipv6_network is None


def test_only_invalid_or_several_valid_entries_give_no_previous_subnet() -> None:
    assert parse_previous("FLANNEL_SUBNET=not-a-cidr\n").subnet is None
    assert parse_previous("FLANNEL_SUBNET=10.1.0.1/24,10.2.0.1/24\n").subnet is None
    assert parse_previous("FLANNEL_IPV6_SUBNET=not-a-cidr\n").ipv6_subnet is None


def test_godotenv_syntax_comments_quotes_and_export() -> None:
    values = parse_env(
        '# written by flanneld\nexport FLANNEL_SUBNET="10.5.72.1/24"\n'
        "FLANNEL_NETWORK='10.5.0.0/16'\nFLANNEL_MTU=1450 # trailing\n\nnonsense\n"
    )
    assert values == {
        "FLANNEL_SUBNET": "10.5.72.1/24",
        "FLANNEL_NETWORK": "10.5.0.0/16",
        "FLANNEL_MTU": "1450",
    }
