"""The extension backend: commands split and expanded as upstream (no shell), their environment,
stdin and output, errors and timeouts, and the per-peer retry that upstream lacks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from flannel.backend.base import BackendContext
from flannel.backend.extension.backend import ExtensionBackend, ExtensionConfig, ExtensionNetwork
from flannel.backend.extension.command import CommandFailed, command_argv, expand, run_command
from flannel.errors import BackendError
from flannel.model.config import check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.subnet.memory import MemorySubnetManager

ENV = {"SUBNET": "10.5.7.0/24", "PUBLIC_IP": "192.168.100.12", "A": "x"}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$SUBNET", "10.5.7.0/24"),
        ("${PUBLIC_IP}:80", "192.168.100.12:80"),
        ("pre$A.post", "prex.post"),
        ("$UNSET", ""),
        ("cost$", "cost$"),  # a trailing $ stays
        ("a$-b", "ab"),  # a special one-character name ($-) expands (to nothing here)
        ("${}", ""),  # bad syntax is eaten, as Go does
        ("${A", "A"),  # unterminated: "${" eaten
        ("$%x", "$%x"),  # $ before no name stays
        ("$$", ""),
    ],
)
def test_words_expand_like_go_os_expand(word: str, expected: str) -> None:
    assert expand(word, lambda name: ENV.get(name, "")) == expected


def test_commands_split_on_whitespace_without_a_shell() -> None:
    argv = command_argv("ip  route replace $SUBNET via $PUBLIC_IP && echo 'x y'", ENV)
    assert argv == [
        "ip", "route", "replace", "10.5.7.0/24", "via", "192.168.100.12", "&&", "echo", "'x", "y'",
    ]  # fmt: skip


async def test_stdin_env_and_trimmed_combined_output(tmp_path: Path) -> None:
    script = tmp_path / "echo.sh"
    script.write_text('read data\necho "  $data $SUBNET  "\n')
    result = await run_command(f"sh {script}", extra_env={"SUBNET": "10.5.7.0/24"}, stdin="peer")
    assert result.output == "peer 10.5.7.0/24"
    assert result.argv == ("sh", str(script))


async def test_stderr_is_part_of_the_output_and_a_failure_names_command_code_and_output(
    tmp_path: Path,
) -> None:
    script = tmp_path / "fail.sh"
    script.write_text("echo to-stdout\necho to-stderr >&2\nexit 3\n")
    with pytest.raises(CommandFailed) as caught:
        await run_command(f"sh {script}")
    message = str(caught.value)
    assert message.startswith(f"failed to run command: sh {script} Err: exit status 3 Output: ")
    assert "to-stdout" in message and "to-stderr" in message


async def test_a_missing_program_is_a_command_failure() -> None:
    with pytest.raises(CommandFailed, match="cannot start no-such-program-x"):
        await run_command("no-such-program-x arg")


async def test_a_hung_command_is_killed_at_its_timeout() -> None:
    with pytest.raises(CommandFailed, match=r"timed out after 0.3s \(CommandTimeout\)"):
        await run_command("sleep 30", timeout=0.3)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"SubnetAddCommand": 5}, "SubnetAddCommand must be a string"),
        ({"CommandTimeout": 0}, "CommandTimeout must be seconds"),
        ({"CommandTimeout": "30"}, "CommandTimeout must be seconds"),
    ],
)
def test_bad_config_names_the_field(raw: dict[str, object], message: str) -> None:
    with pytest.raises(BackendError, match=message):
        ExtensionConfig.decode(raw)


CONF = check_network_config(
    parse_config('{"Network":"10.5.0.0/16","Backend":{"Type":"extension"}}')
)
EXT = ExternalInterface(
    "eth0", 2, 1500, IPv4Address("192.168.100.11"), None, IPv4Address("203.0.113.1"), None
)


def ctx(backend: dict[str, object]) -> BackendContext:
    manager = MemorySubnetManager(CONF, prev_subnet=IPv4Network("10.5.3.0/24"))
    return BackendContext(CONF, backend, EXT, manager)


async def test_pre_startup_output_is_backend_data_as_a_json_string_and_public_ip_is_the_interfaces(
    tmp_path: Path,
) -> None:
    out = tmp_path / "post.txt"
    script = tmp_path / "post.sh"
    script.write_text(f'echo "$NETWORK $SUBNET $IPV6SUBNET $PUBLIC_IP $PUBLIC_IPV6" > {out}\n')
    network = await ExtensionBackend().register_network(
        ctx({"PreStartupCommand": "echo <node-a> & co", "PostStartupCommand": f"sh {script}"})
    )
    attrs = network.lease.attrs
    assert attrs.backend_data == json.dumps("<node-a> & co").replace("<", "\\u003c").replace(
        ">", "\\u003e"
    ).replace("&", "\\u0026")
    assert attrs.public_ip == IPv4Address("192.168.100.11")  # interface address, not ExtAddr
    assert out.read_text().split() == [
        "10.5.0.0/16", "10.5.3.0/24", "::/0", "192.168.100.11", "<nil>",
    ]  # fmt: skip


async def test_failing_pre_startup_command_fails_registration() -> None:
    with pytest.raises(CommandFailed, match="failed to run command: false"):
        await ExtensionBackend().register_network(ctx({"PreStartupCommand": "false"}))


def peer(n: int, data: str | None = '"payload"', btype: str = "extension") -> Lease:
    return Lease(
        IPv4Network(f"10.5.{n}.0/24"),
        LeaseAttrs(
            public_ip=IPv4Address(f"192.168.100.{n}"), backend_type=btype, backend_data=data
        ),
    )


async def events_from(queue: asyncio.Queue[list[LeaseEvent]]) -> AsyncIterator[list[LeaseEvent]]:
    while True:
        yield await queue.get()


async def wait_for(check: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_failing_add_command_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    log, gate = tmp_path / "log", tmp_path / "gate"
    script = tmp_path / "add.sh"
    script.write_text(f'test -e {gate} || exit 1\nread d; echo "$SUBNET $PUBLIC_IP $d" >> {log}\n')
    cfg = ExtensionConfig(subnet_add=f"sh {script}")
    network = ExtensionNetwork(peer(1), 1500, cfg)
    queue: asyncio.Queue[list[LeaseEvent]] = asyncio.Queue()
    job = asyncio.create_task(network.jobs(events_from(queue))["extension-peers"])
    try:
        await queue.put([LeaseEvent(EventType.ADDED, peer(7))])
        await wait_for(lambda: network.stats.failures >= 2)
        assert not log.exists()
        gate.touch()
        await wait_for(log.exists)
        assert log.read_text() == "10.5.7.0/24 192.168.100.7 payload\n"
        assert network.not_ready() is None
        counts = {f.name: next(iter(f.samples()))[1] for f in network.metric_families()}
        assert counts["flannel_extension_command_failures_total"] >= 2
        assert (
            counts["flannel_extension_command_runs_total"]
            == counts["flannel_extension_command_failures_total"] + 1
        )
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)


async def test_a_removal_supersedes_a_pending_add_and_runs_the_remove_command(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    script = tmp_path / "rm.sh"
    script.write_text(f'echo "removed $SUBNET" >> {log}\n')
    cfg = ExtensionConfig(subnet_add="false", subnet_remove=f"sh {script}")
    network = ExtensionNetwork(peer(1), 1500, cfg)
    queue: asyncio.Queue[list[LeaseEvent]] = asyncio.Queue()
    job = asyncio.create_task(network.jobs(events_from(queue))["extension-peers"])
    try:
        await queue.put([LeaseEvent(EventType.ADDED, peer(7))])
        await wait_for(lambda: network.stats.failures >= 1)
        await queue.put([LeaseEvent(EventType.REMOVED, peer(7))])
        await wait_for(log.exists)
        assert log.read_text() == "removed 10.5.7.0/24\n"
        failures = network.stats.failures
        await asyncio.sleep(1.2)  # the superseded add would have retried by now
        assert network.stats.failures == failures
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)


async def test_non_extension_leases_and_non_string_backend_data_run_nothing(tmp_path: Path) -> None:
    log = tmp_path / "log"
    script = tmp_path / "add.sh"
    script.write_text(f"echo ran >> {log}\n")
    network = ExtensionNetwork(peer(1), 1500, ExtensionConfig(subnet_add=f"sh {script}"))
    network.handle(LeaseEvent(EventType.ADDED, peer(7, btype="vxlan")))
    network.handle(LeaseEvent(EventType.ADDED, peer(8, data='{"not":"a string"}')))
    await asyncio.sleep(0.3)
    assert not log.exists() and network.stats.runs == 0
