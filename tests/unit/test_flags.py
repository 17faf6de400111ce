"""flanneld flag parsing follows Go's flag package, with exit-2 errors that name the flag."""

from pathlib import Path

import pytest

from flannel.cli.flags import FLAGS, parse_args, usage
from flannel.cli.flanneld import main
from flannel.errors import FlagError
from flannel.model.settings import Settings


def test_defaults_match_upstream() -> None:
    settings = parse_args([], {}).settings
    assert settings == Settings()
    assert settings.etcd_endpoints == ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
    assert settings.etcd_prefix == "/coreos.com/network"
    assert settings.subnet_file == "/run/flannel/subnet.env"
    assert settings.subnet_lease_renew_margin == 60
    assert settings.iptables_resync == 5
    assert settings.iptables_forward_rules is True
    assert settings.healthz_ip == "0.0.0.0" and settings.healthz_port == 0
    assert settings.net_config_path == "/etc/kube-flannel/net-conf.json"
    assert settings.kube_annotation_prefix == "flannel.alpha.coreos.com"


@pytest.mark.parametrize(
    "argv",
    [
        ["-subnet-file", "/x.env"],
        ["--subnet-file", "/x.env"],
        ["-subnet-file=/x.env"],
        ["--subnet-file=/x.env"],
    ],
)
def test_single_and_double_dash_with_or_without_equals(argv: list[str]) -> None:
    assert parse_args(argv, {}).settings.subnet_file == "/x.env"


def test_bool_flags_take_no_separate_value_and_parsing_stops_at_positional() -> None:
    settings = parse_args(["--ip-masq", "false", "--iface", "eth9"], {}).settings
    assert settings.ip_masq is True
    assert settings.iface == ()  # "false" is positional: parsing stopped there, as Go does


@pytest.mark.parametrize(
    "text,expected", [("1", True), ("T", True), ("True", True), ("f", False), ("FALSE", False)]
)
def test_bool_values_accept_go_parsebool(text: str, expected: bool) -> None:
    assert parse_args([f"--ip-masq={text}"], {}).settings.ip_masq is expected


def test_repeatable_iface_flags_keep_order() -> None:
    settings = parse_args(
        ["--iface", "eth1", "-iface=10.0.0.1", "--iface-regex", "^en", "--iface-regex=eth.*"], {}
    ).settings
    assert settings.iface == ("eth1", "10.0.0.1")
    assert settings.iface_regex == ("^en", "eth.*")


def test_environment_fills_only_flags_not_on_the_command_line() -> None:
    env = {
        "FLANNELD_ETCD_PREFIX": "/env/prefix",
        "FLANNELD_IP_MASQ": "true",
        "FLANNELD_IFACE": "eth1,eth2",
        "FLANNELD_SUBNET_FILE": "/env.env",
        "FLANNELD_V": "4",
        "FLANNELD_ETCD_ENDPOINTS": "http://a:2379,http://b:2379",
    }
    settings = parse_args(["--subnet-file", "/cli.env"], env).settings
    assert settings.etcd_prefix == "/env/prefix"
    assert settings.ip_masq is True
    assert settings.iface == ("eth1,eth2",)  # exactly one value, no list splitting (upstream)
    assert settings.subnet_file == "/cli.env"
    assert settings.verbosity == 4
    assert settings.etcd_endpoints == ("http://a:2379", "http://b:2379")


def test_flanneld_version_env_has_no_effect() -> None:
    assert parse_args([], {"FLANNELD_VERSION": "true"}).version is False


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--bogus"], "flag provided but not defined: -bogus"),
        (["--healthz-port", "abc"], '"abc" for flag -healthz-port'),
        (["--ip-masq=maybe"], '"maybe" for flag -ip-masq'),
        (["--subnet-lease-renew-margin=0"], "-subnet-lease-renew-margin"),
        (["--subnet-lease-renew-margin=1440"], "-subnet-lease-renew-margin"),
        (["--iface"], "flag needs an argument: -iface"),
    ],
)
def test_bad_flags_raise_errors_naming_the_flag(argv: list[str], needle: str) -> None:
    with pytest.raises(FlagError) as info:
        parse_args(argv, {})
    assert needle in str(info.value)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(FlagError, match="FLANNELD_HEALTHZ_PORT"):
        parse_args([], {"FLANNELD_HEALTHZ_PORT": "eighty"})


def test_cli_exits_2_on_unknown_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert "flag provided but not defined: -no-such-flag" in err
    assert err.count("Usage:") == 1


def test_cli_version_goes_to_stderr_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.strip() != ""


def test_usage_lists_every_flag() -> None:
    text = usage("flanneld")
    for spec in FLAGS:
        assert f"-{spec.name}" in text


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--etcd-endpoints=not-a-url"], 'invalid value "not-a-url" for flag -etcd-endpoints: endpoint 1 of 1 is not a URL'),
        (["--etcd-endpoints=http://a:2379,,http://b:2379"], "empty endpoint in the list"),
        (["--etcd-endpoints=http://:2379"], "endpoint 1 of 1 has no valid host"),
        (["--etcd-endpoints=ftp://etcd:2379"], "has no http or https scheme"),
        (["--etcd-endpoints=http://a:2379,http://b:99999"], "endpoint 2 of 2 is not a valid URL"),
        (["--etcd-endpoints=http://etcd:0"], "has port 0 (allowed 1..65535)"),
        (["--etcd-endpoints=http://us er@etcd:2379"], "-etcd-endpoints"),
        (["--etcd-endpoints=http://bad_host!:2379"], "has no valid host"),
        (["--etcd-keyfile=/no/such/key.pem"], 'invalid value "/no/such/key.pem" for flag -etcd-keyfile: no such file'),
        (["--etcd-endpoints=https://a:2379,http://b:2379"], "mixes http:// and https:// endpoints"),
        (["--etcd-endpoints=http://a:2379", "--etcd-cafile=/etc/hostname"], "is plain http:// but -etcd-cafile is set: TLS needs https:// endpoints"),
        (["--etcd-prefix="], 'invalid value "" for flag -etcd-prefix: not a clean key path'),
        (["--etcd-prefix=/coreos.com//network"], "for flag -etcd-prefix: not a clean key path"),
        (["--etcd-prefix=/a/../network"], "for flag -etcd-prefix: not a clean key path"),
        (["--healthz-ip=999.1.1.1"], 'invalid value "999.1.1.1" for flag -healthz-ip: not an IP address (nor a host name)'),
        (["--healthz-port=70000"], 'invalid value "70000" for flag -healthz-port: out of range (allowed 0..65535'),
        (["--healthz-port=-1"], "out of range (allowed 0..65535"),
        (["--healthz-port=99999999999999999999"], "value out of range"),
        (["--iptables-resync=0"], 'invalid value "0" for flag -iptables-resync: out of range (allowed 1..'),
        (["--subnet-lease-renew-margin=0"], "Invalid subnet-lease-renew-margin option, out of acceptable range: flag -subnet-lease-renew-margin is 0, allowed 1..1439"),
        (["-v=-1"], 'invalid value "-1" for flag -v: out of range'),
        (["-v=0x10"], 'invalid value "0x10" for flag -v: parse error'),
        (["--healthz-ip=10.0.0.1/24"], "for flag -healthz-ip: not an IP address"),
        (["--healthz-ip=fe80::1%eth0"], "for flag -healthz-ip: not an IP address"),
        (["--public-ip=fc00::1"], 'for flag -public-ip: not an IPv4 address'),
        (["--public-ip=10.0.0.256"], 'for flag -public-ip: not an IPv4 address'),
        (["--public-ipv6=10.0.0.1"], 'for flag -public-ipv6: not an IPv6 address'),
        (["--iface="], 'invalid value "" for flag -iface: neither an IP address nor an interface name'),
        (["--iface=averyverylongname0"], "1..15 characters"),
        (["--iface-regex=(eth"], 'invalid value "(eth" for flag -iface-regex: not a valid regular expression'),
        (["--iface-can-reach=example.com"], "for flag -iface-can-reach: not an IP address"),
        (["--subnet-file="], "for flag -subnet-file: a path for subnet.env is needed"),
        (["-vmodule=foo"], "syntax error: expect comma-separated list of filename=N"),
        (["-log_backtrace_at=main.go"], "syntax error: expect file.go:234"),
        (["--log-format=xml"], 'invalid value "xml" for flag -log-format: use text or json'),
        (["--kube-subnet-mgr", "--kube-api-url=not-a-url"], "for flag -kube-api-url: the API server URL has no http or https scheme"),
        (["--kube-subnet-mgr", "--kube-annotation-prefix=org"], "prefix must be in a format: fqdn/[0-9a-z-_]*"),
        (["--kube-subnet-mgr", "--kubeconfig-file=/no/such/kubeconfig"], "-kubeconfig-file: no such file"),
    ],
)  # fmt: skip
def test_bad_values_name_the_flag_the_value_and_what_is_allowed(
    argv: list[str], needle: str
) -> None:
    with pytest.raises(FlagError) as info:
        parse_args(argv, {})
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "endpoints",
    [
        "http://127.0.0.1:2379",
        "https://etcd-0.etcd.svc:2379,https://etcd-1.etcd.svc:2379",
        "http://[fd00::1]:2379",
        "10.0.0.5:2379",
        "http://etcd",
        "https://etcd.example.com/",
    ],
)
def test_etcd_endpoint_forms_the_client_accepts_are_accepted(endpoints: str) -> None:
    assert parse_args([f"--etcd-endpoints={endpoints}"], {}).settings.etcd_endpoints == tuple(
        endpoints.split(",")
    )


def test_go_integer_syntax_is_accepted_for_flanneld_ints() -> None:
    assert parse_args(["--healthz-port=0x1F90"], {}).settings.healthz_port == 8080
    assert parse_args(["--healthz-port=010"], {}).settings.healthz_port == 8  # Go: octal
    assert parse_args(["--healthz-port=8_081"], {}).settings.healthz_port == 8081
    assert parse_args(["--healthz-port=+80"], {}).settings.healthz_port == 80
    for bad in ("08", "8__0", "_80", "80_", "0x", "٨٠"):
        with pytest.raises(FlagError, match="parse error"):
            parse_args([f"--healthz-port={bad}"], {})


def test_mode_specific_flags_are_checked_only_in_their_mode() -> None:
    kube = parse_args(["--kube-subnet-mgr", "--etcd-endpoints=not-a-url"], {}).settings
    assert kube.etcd_endpoints == ("not-a-url",)  # ignored in kube mode, as upstream
    etcd = parse_args(["--kube-api-url=not-a-url", "--kube-annotation-prefix=org"], {})
    assert etcd.settings.kube_api_url == "not-a-url"


def test_tls_key_and_certificate_must_come_together(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    key.write_text("k")
    cert.write_text("c")
    with pytest.raises(FlagError, match=r"flag -etcd-keyfile is set but -etcd-certfile is not"):
        parse_args(["--etcd-endpoints=https://127.0.0.1:2379", f"--etcd-keyfile={key}"], {})
    https = "--etcd-endpoints=https://127.0.0.1:2379"
    ok = parse_args([https, f"--etcd-keyfile={key}", f"--etcd-certfile={cert}"], {}).settings
    assert (ok.etcd_keyfile, ok.etcd_certfile) == (str(key), str(cert))


def test_a_bad_value_from_the_environment_names_the_variable() -> None:
    with pytest.raises(FlagError) as info:
        parse_args([], {"FLANNELD_HEALTHZ_IP": "999.1.1.1"})
    assert str(info.value) == (
        'invalid value "999.1.1.1" for environment variable FLANNELD_HEALTHZ_IP '
        "(flag -healthz-ip): not an IP address (nor a host name)"
    )


def test_good_values_of_every_checked_flag_pass() -> None:
    settings = parse_args(
        [
            "--healthz-ip=::1",
            "--healthz-port=8081",
            "--public-ip=10.0.0.1",
            "--public-ipv6=fc00::1",
            "--iface=eth0",
            "--iface=10.0.0.1",
            "--iface-regex=^en.*",
            "--iface-can-reach=8.8.8.8",
            "-vmodule=main=2,backend*=4",
            "-log_backtrace_at=main.go:10",
            "-v=10",
            "--iptables-resync=3600",
        ],
        {},
    ).settings
    assert settings.healthz_ip == "::1" and settings.verbosity == 10


def test_cli_exits_2_on_a_bad_healthz_ip_before_contacting_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--healthz-ip=999.1.1.1", "--etcd-endpoints=http://192.0.2.1:2379"]) == 2
    assert 'invalid value "999.1.1.1" for flag -healthz-ip' in capsys.readouterr().err


@pytest.mark.parametrize("prefix", ["/coreos.com/network", "/coreos.com/network/", "/", "my/net"])
def test_etcd_prefixes_that_name_the_same_keys_as_go_are_accepted(prefix: str) -> None:
    assert parse_args([f"--etcd-prefix={prefix}"], {}).settings.etcd_prefix == prefix


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "127.0.0.1", "localhost", "node-1.example."])
def test_healthz_ip_takes_addresses_and_host_names_like_gos_listener(host: str) -> None:
    assert parse_args([f"--healthz-ip={host}"], {}).settings.healthz_ip == host
