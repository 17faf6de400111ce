"""flanneld flag parsing follows Go's flag package, with exit-2 errors that name the flag."""

import pytest

from flannel.cli.flags import FLAGS, parse_args, usage
from flannel.cli.flanneld import main
from flannel.daemon.settings import Settings
from flannel.errors import FlagError


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
