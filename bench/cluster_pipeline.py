"""Whether the auto-pipeline pays on a Redis Cluster: a push's commands sent alone or batched.

    .venv/bin/python bench/cluster_pipeline.py [--pushes 2000]

Starts a local cluster of three masters with a replica each (tests/redis_nodes.py) and
runs, in one process, what a push asks of Redis (its nonce SET NX, its claim SET NX, the
script that replaces the claim by the reply) for many pushes at a time: each command sent
on its own through redis-py's RedisCluster, then through service/store/pipeline.py, whose
pipelines redis-py splits by node. Prints pushes/s and client CPU per push, twice each.
deploy/README.md (Redis) quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.asyncio.cluster import ClusterNode, RedisCluster

from tests.redis_nodes import redis_cluster
from wxhook.server.store.pipeline import AutoPipeline
from wxhook.server.store.redis import _REPLACE_IF

CLAIM = b"\x00pending:0123456789abcdef"
REPLY = b"<xml><Content><![CDATA[Welcome, Follower-000001!]]></Content></xml>"


async def run(rc: RedisCluster, *, piped: bool, at_once: int, pushes: int) -> tuple[float, float]:
    """(pushes/s, client CPU µs per push) with `at_once` pushes in flight."""
    batch = AutoPipeline(rc)
    tag = f"{os.getpid()}:{time.monotonic_ns()}"

    async def push(i: int) -> None:
        nonce, claim = f"wxhook:wxbench:nonce:{tag}:{i}", f"wxhook:wxbench:dedup:m:{tag}:{i}"
        if piped:
            await batch.submit(lambda p: p.set(nonce, b"n" * 28, px=300_000, nx=True))
            await batch.submit(lambda p: p.set(claim, CLAIM, px=2000, nx=True))
            await batch.submit(lambda p: p.eval(_REPLACE_IF, 1, claim, CLAIM, REPLY, 60_000))
        else:
            await rc.set(nonce, b"n" * 28, px=300_000, nx=True)
            await rc.set(claim, CLAIM, px=2000, nx=True)
            await rc.eval(_REPLACE_IF, 1, claim, CLAIM, REPLY, 60_000)

    async def lane(start: int) -> None:
        for i in range(start, pushes, at_once):
            await push(i)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(lane(k) for k in range(at_once)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return pushes / wall, cpu / pushes * 1e6


async def main(ports: list[int], pushes: int) -> None:
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports],
                      socket_timeout=5)
    await rc.initialize()
    try:
        for at_once in (1, 16, 64):
            for piped in (False, True, False, True):
                rate, cpu = await run(rc, piped=piped, at_once=at_once, pushes=pushes)
                print(f"{at_once:3d} in flight  {'pipelined' if piped else 'alone    '}  "
                      f"{rate:7.0f} pushes/s  {cpu:5.0f} us CPU per push")
    finally:
        await rc.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pushes", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_cluster(Path(tmp)) as cluster:
        asyncio.run(main([n.port for n in cluster.masters()], args.pushes))
