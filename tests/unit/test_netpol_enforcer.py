"""The enforcer against the API double (real HTTP, real lightkube) and real nft in a throwaway
network namespace: lists each kind once and then follows the watches with incremental writes,
re-lists after a compacted history (410), resumes after an outage, repairs a hand-altered or deleted
table at resync, keeps the table across a restart, and refuses to run beside kube-network-policies."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from flannel.errors import TrafficError
from flannel.lab.apiserver import KubeApiDouble
from flannel.model.settings import Settings
from flannel.netpol.compiler import Options, chain_name
from flannel.netpol.enforcer import Enforcer
from flannel.subnet.kube_client import KubeApi, make_client
from flannel.trafficmgr.runner import Runner

DENY_WEB = {
    "metadata": {"name": "deny-web"},
    "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]},
}
FROM_CLIENTS = {
    "metadata": {"name": "from-clients"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
    },
}
pytestmark = pytest.mark.netns
PODS = "/api/v1/pods"
POLICIES = "/apis/networking.k8s.io/v1/networkpolicies"


def nft(ns: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", ns, "nft", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)


def table(ns: str) -> str:
    return nft(ns, "list", "table", "inet", "flannel-netpol").stdout


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` (it reads the kernel) until true; fail naming ``what``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pfnp-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
async def api() -> AsyncIterator[KubeApiDouble]:
    double = KubeApiDouble()
    double.bookmark_interval = 0.2
    await double.start()
    double.add_pod("shop", "web", "n1", labels={"app": "web"}, ip="10.0.1.2")
    double.add_pod("shop", "db", "n1", labels={"app": "db"}, ip="10.0.1.3")
    try:
        yield double
    finally:
        await double.stop()


Started = Callable[[], Awaitable[Enforcer]]


@pytest.fixture
async def running(api: KubeApiDouble, netns: str) -> AsyncIterator[Started]:
    """Starts ``Enforcer.run()`` as a task (resync 0.3 s); cancelled and closed afterwards."""
    tasks: list[tuple[asyncio.Task[None], KubeApi]] = []

    async def start() -> Enforcer:
        kube = KubeApi(make_client(Settings(kube_api_url=api.url)))
        subject = Enforcer(kube, Runner(netns=netns), Options(node="n1"), resync=0.3)
        tasks.append((asyncio.create_task(subject.run()), kube))
        await asyncio.wait_for(subject.ready.wait(), 10)
        return subject

    yield start
    for task, kube in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kube.close()


async def test_lists_once_then_programs_each_watched_change_in_place(
    api: KubeApiDouble, netns: str, running: Started
) -> None:
    api.add_network_policy("shop", DENY_WEB)
    subject = await running()
    assert "10.0.1.2 : jump ingress-" in table(netns) and "10.0.1.3" not in table(netns)
    assert subject.counters.full_writes == 1
    api.add_network_policy("shop", {**DENY_WEB, "metadata": {"name": "deny-db"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}}})  # fmt: skip
    await until(lambda: "10.0.1.3 : jump ingress-" in table(netns), "db is isolated")
    api.add_network_policy("shop", FROM_CLIENTS)
    api.add_pod("shop", "c1", "n2", labels={"app": "client"}, ip="10.0.2.7")
    await until(lambda: "10.0.2.7" in table(netns), "the new client is in web's peer set")
    api.kinds["networkpolicies"].delete("shop", "deny-db")
    await until(lambda: "10.0.1.3" not in table(netns), "db is open again")
    # The kernel shows a transaction as soon as `nft` commits it, a moment before the enforcer
    # counts it: wait for the count. The changes above may coalesce (the new policy and the new
    # pod can land in one batch), so three in-place writes at least, and no rewrite ever.
    await until(lambda: subject.counters.incremental_writes >= 3, "every batch written in place")
    assert subject.counters.full_writes == 1
    for path in (PODS, POLICIES, "/api/v1/namespaces"):
        assert api.count("GET", path, watch=False) == 1, path  # never re-listed
        assert api.count("GET", path, watch=True) >= 1, path
    await asyncio.sleep(0.7)  # resyncs pass: nothing to repair
    assert subject.counters.resyncs >= 1 and subject.counters.repairs == 0


async def test_a_compacted_history_is_re_listed_and_a_missed_deletion_seen(
    api: KubeApiDouble, netns: str, running: Started
) -> None:
    api.add_network_policy("shop", DENY_WEB)
    subject = await running()
    api.hold_watches()
    api.kinds["networkpolicies"].delete("shop", "deny-web")
    api.compact()  # history gone: resuming from the old version is a 410
    api.release_watches()
    await until(lambda: "jump" not in table(netns), "the deletion missed by the watch applies")
    assert api.count("GET", POLICIES, watch=False) == 2
    assert subject.counters.full_writes == 1  # the re-list's diff was written in place


async def test_a_watch_outage_keeps_the_rules_and_resumes_from_its_version(
    api: KubeApiDouble, netns: str, running: Started
) -> None:
    api.add_network_policy("shop", DENY_WEB)
    await running()
    api.fail("watch", "networkpolicies")
    api.drop_connections()
    await asyncio.sleep(0.5)
    assert "10.0.1.2 : jump ingress-" in table(netns)  # still enforced while the API fails
    api.kinds["networkpolicies"].delete("shop", "deny-web")
    api.heal("watch", "networkpolicies")
    await until(lambda: "jump" not in table(netns), "the deletion arrives after the outage")
    assert api.count("GET", POLICIES, watch=False) == 1  # resumed, not re-listed


async def test_resync_repairs_a_hand_altered_and_a_deleted_table(
    api: KubeApiDouble, netns: str, running: Started
) -> None:
    api.add_network_policy("shop", FROM_CLIENTS)
    api.add_pod("shop", "c1", "n2", labels={"app": "client"}, ip="10.0.2.7")
    subject = await running()
    chain = chain_name("ingress", "shop", "web")
    good = table(netns)
    assert nft(netns, "flush", "chain", "inet", "flannel-netpol", chain).returncode == 0
    await until(lambda: table(netns) == good, "the flushed chain is refilled")
    set_name = next(w for w in good.split() if w.startswith("@peer4-"))[1:]
    assert nft(netns, "flush", "set", "inet", "flannel-netpol", set_name).returncode == 0
    await until(lambda: "10.0.2.7" in table(netns), "the emptied peer set is refilled")
    nft(netns, "delete", "table", "inet", "flannel-netpol")
    await until(lambda: "10.0.1.2 : jump" in table(netns), "the deleted table is rewritten")
    assert subject.counters.repairs >= 3


async def test_a_restarted_enforcer_finds_the_table_enforcing_and_replaces_it_atomically(
    api: KubeApiDouble, netns: str, running: Started
) -> None:
    api.add_network_policy("shop", DENY_WEB)
    await running()
    listing = table(netns)
    api.add_network_policy("shop", {**DENY_WEB, "metadata": {"name": "deny-db"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}}})  # fmt: skip
    await until(lambda: "10.0.1.3 : jump" in table(netns), "db isolated by the first run")
    second = await running()  # a second process takes over; the first's table never vanished
    assert "10.0.1.2 : jump" in table(netns) and "10.0.1.3 : jump" in table(netns)
    assert second.counters.full_writes == 1 and listing


async def test_enforcer_refuses_beside_kube_network_policies(
    api: KubeApiDouble, netns: str
) -> None:
    nft(netns, "-f", "-", stdin="table inet kube-network-policies {}\n")
    kube = KubeApi(make_client(Settings(kube_api_url=api.url)))
    subject = Enforcer(kube, Runner(netns=netns), Options(node="n1"), resync=1)
    with pytest.raises(TrafficError, match="kube-network-policies"):
        await subject.run()
    assert "flannel-netpol" not in nft(netns, "list", "tables").stdout
    nft(netns, "delete", "table", "inet", "kube-network-policies")
    await subject.refuse_if_knp()
    await kube.close()
