"""Redis topologies of the suite's own on free ports: a cluster (masters with a replica
each) and a Sentinel group (master, replica, sentinels), with the failovers the tests need.

Every process runs from a temporary directory with persistence off, and is SIGKILLed when
its context ends. Small timeouts (a node or master is judged down after about a second) keep
a failover within a few seconds, as the test budget needs; production uses larger ones.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis

from tests.support import RedisServer, free_port, need_redis_server

NODE_TIMEOUT_MS = 1000


def _wait(what: str, check: object, timeout: float) -> None:
    """Poll `check()` until it is true, or fail saying `what`."""
    end = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < end:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout} s" + (f" (last error: {last})" if last else ""))


def _info(port: int, section: str) -> dict[str, str]:
    with redis.Redis(port=port, socket_timeout=1) as r:
        text = r.execute_command("INFO", section)
    if isinstance(text, dict):
        return {k: str(v) for k, v in text.items()}
    return dict(line.split(":", 1) for line in text.decode().splitlines() if ":" in line)


class Cluster:
    """A Redis Cluster: `masters` masters with `replicas` replicas each, on loopback."""

    def __init__(self, tmp: Path, *, masters: int = 3, replicas: int = 1) -> None:
        need_redis_server()
        self.replicas = replicas
        self.nodes: list[RedisServer] = []
        for _ in range(masters * (1 + replicas)):
            node = RedisServer(tmp, "--cluster-enabled", "yes",
                               "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                               "--cluster-port", str(free_port()),
                               "--cluster-replica-validity-factor", "0")
            # Each node rewrites a config file of its own: name it by the node's port.
            node.args += ("--cluster-config-file", f"nodes-{node.port}.state")
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """REDIS_URL for wxhook: every node a startup node (any one would do)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        """Start the nodes, join them (a replica per master), wait until every slot serves."""
        for node in self.nodes:
            node.start()
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{n.port}" for n in self.nodes),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_healthy()

    def live(self) -> list[RedisServer]:
        """The nodes whose process runs."""
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def masters(self) -> list[RedisServer]:
        """Live nodes that are masters now."""
        return [n for n in self.live() if _info(n.port, "replication")["role"] == "master"]

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every live node says cluster_state:ok and every replica's link is up."""
        def ok() -> bool:
            for n in self.live():
                if _info(n.port, "cluster").get("cluster_enabled") != "1":
                    return False
                with redis.Redis(port=n.port, socket_timeout=1) as r:
                    state = r.execute_command("CLUSTER", "INFO")
                text = state if isinstance(state, str) else state.decode() \
                    if isinstance(state, bytes) else str(state)
                if "cluster_state:ok" not in text:
                    return False
                rep = _info(n.port, "replication")
                if rep["role"] == "slave" and rep.get("master_link_status") != "up":
                    return False
            return True
        _wait("the cluster did not become healthy", ok, timeout)

    def master_of(self, key: str) -> RedisServer:
        """The node serving `key`'s slot now, as the cluster itself says."""
        with redis.Redis(port=self.masters()[0].port, socket_timeout=1) as r:
            slot = int(r.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(master[1]))
        raise LookupError(f"no node serves slot {slot}")

    def hand_over(self, master: RedisServer, timeout: float = 20) -> RedisServer:
        """A planned failover: CLUSTER FAILOVER on the master's replica, which takes over
        once it has every write; returns the new master."""
        replica = next(n for n in self.live()
                       if _info(n.port, "replication").get("master_port") == str(master.port))
        with redis.Redis(port=replica.port, socket_timeout=1) as r:
            r.execute_command("CLUSTER", "FAILOVER")
        _wait(f"the replica on {replica.port} did not take over",
              lambda: _info(replica.port, "replication")["role"] == "master", timeout)
        self.wait_healthy(timeout)
        return replica

    def kill(self, node: RedisServer) -> None:
        """SIGKILL one node: its replica is promoted after the node timeout."""
        node.stop()

    def wait_promoted(self, old: RedisServer, timeout: float = 20) -> None:
        """A replica of the killed master `old` has taken over and every slot is served."""
        def ok() -> bool:
            for n in self.live():
                with redis.Redis(port=n.port, socket_timeout=1) as r:
                    state = r.execute_command("CLUSTER", "INFO")
                text = state.decode() if isinstance(state, bytes) else str(state)
                if "cluster_state:ok" not in text:
                    return False
            return len(self.masters()) == len(self.nodes) // (1 + self.replicas)
        _wait(f"no replica took over from the master on {old.port}", ok, timeout)

    def wait_down(self, timeout: float = 20) -> None:
        """Every live node says cluster_state:fail (a master lost with no replica)."""
        def down() -> bool:
            for n in self.live():
                with redis.Redis(port=n.port, socket_timeout=1) as r:
                    state = r.execute_command("CLUSTER", "INFO")
                if "cluster_state:fail" not in (state.decode() if isinstance(state, bytes)
                                                else str(state)):
                    return False
            return True
        _wait("the cluster did not notice the lost master", down, timeout)

    def stop(self) -> None:
        """Kill every node."""
        for node in self.nodes:
            node.stop()


@contextmanager
def redis_cluster(tmp: Path, *, masters: int = 3, replicas: int = 1) -> Iterator[Cluster]:
    """A started Cluster, every node killed at the end."""
    cluster = Cluster(tmp, masters=masters, replicas=replicas)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class SentinelGroup:
    """A master, a replica and `sentinels` sentinels watching them as service `name`."""

    def __init__(self, tmp: Path, *, sentinels: int = 3, name: str = "wxhook") -> None:
        need_redis_server()
        self.tmp = tmp
        self.name = name
        self.master = RedisServer(tmp)
        self.replica = RedisServer(tmp, "--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinels: list[RedisServer] = []
        quorum = sentinels // 2 + 1
        for i in range(sentinels):
            conf = tmp / f"sentinel-{i}.conf"  # a sentinel rewrites its own file
            conf.write_text(
                f"sentinel monitor {name} 127.0.0.1 {self.master.port} {quorum}\n"
                f"sentinel down-after-milliseconds {name} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {name} 5000\n")
            self.sentinels.append(RedisServer(tmp, str(conf), "--sentinel"))

    @property
    def url(self) -> str:
        """REDIS_URL for wxhook."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.name}/0"

    def start(self) -> None:
        """Start master, replica and sentinels; wait until every sentinel knows the replica."""
        self.master.start()
        self.replica.start()
        _wait("the replica did not sync", lambda: _info(self.replica.port, "replication")
              .get("master_link_status") == "up", 20)
        for s in self.sentinels:
            s.start()
        def known() -> bool:
            for s in self.sentinels:
                with redis.Redis(port=s.port, socket_timeout=1) as r:
                    replicas = r.execute_command("SENTINEL", "REPLICAS", self.name)
                    others = r.execute_command("SENTINEL", "SENTINELS", self.name)
                if not replicas or len(others) < len(self.sentinels) - 1:
                    return False
            return True
        _wait("the sentinels did not discover the replica and each other", known, 30)

    def current_master(self) -> int:
        """The port the sentinels name as master now."""
        with redis.Redis(port=self.sentinels[0].port, socket_timeout=1) as r:
            _, port = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        return int(port)

    def wait_promoted(self, old_port: int, timeout: float = 20) -> None:
        """Every sentinel names another master and that one accepts writes."""
        def ok() -> bool:
            ports = set()
            for s in self.sentinels:
                if s.proc is None or s.proc.poll() is not None:
                    continue
                with redis.Redis(port=s.port, socket_timeout=1) as r:
                    _, port = r.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                                self.name)
                ports.add(int(port))
            if len(ports) != 1 or old_port in ports:
                return False
            return _info(ports.pop(), "replication")["role"] == "master"
        _wait(f"the sentinels did not promote a replica of {old_port}", ok, timeout)

    def stop(self) -> None:
        """Kill every process."""
        for p in (*self.sentinels, self.replica, self.master):
            p.stop()


@contextmanager
def sentinel_group(tmp: Path, *, sentinels: int = 3) -> Iterator[SentinelGroup]:
    """A started SentinelGroup, every process killed at the end."""
    group = SentinelGroup(tmp, sentinels=sentinels)
    with ExitStack() as stack:
        stack.callback(group.stop)
        group.start()
        yield group
