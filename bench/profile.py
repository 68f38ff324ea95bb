"""Where wxhook's time goes under load: py-spy samples the server while wrk drives it.

    .venv/bin/python bench/profile.py [--scenario plain|aes|subscribe] [--seconds 10]

Prints the functions with the most samples, by own time and by inclusive time, so the
README's "where the time goes" can be reproduced. Needs py-spy (pip) and wrk (Debian).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import gen
from bench.run import (
    LOGS,
    PORTS,
    SERVERS,
    VENV_BIN,
    Proc,
    Upstream,
    port_free,
    run_wrk,
    server_env,
    wait_ready,
    write_pool,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenario", default="plain", choices=gen.SCENARIOS)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--lines", action="store_true", help="also rank source lines by own time")
    a = p.parse_args()
    spy = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    creds, seq = gen.Creds(), gen.Sequence()
    LOGS.mkdir(parents=True, exist_ok=True)
    up = Upstream(creds, "1")
    port = PORTS["wxhook"]
    port_free(port)
    server = Proc(SERVERS["wxhook"].command(port, 1), cpus="0",
                  env=server_env(creds, a.scenario), log=LOGS / f"profile-{a.scenario}.log")
    try:
        wait_ready(server, port, "/healthz")
        conns = 256 if a.scenario == "subscribe" else 64
        with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) \
                as tmp:
            prefix, _ = write_pool(tmp, "warm", a.scenario, 30_000, port, creds, seq, 1)
            run_wrk(port, prefix, 2, 1, "1", conns)
            prefix, _ = write_pool(tmp, "run", a.scenario, 40_000 * a.seconds, port, creds, seq,
                                   1)
            raw = Path(tmp) / "profile.txt"
            spy_proc = subprocess.Popen(
                [spy, "record", "--pid", str(server.pid), "--duration", str(a.seconds),
                 "--rate", "250", "--format", "raw", "--output", str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            res = run_wrk(port, prefix, a.seconds, 1, "1", conns)
            spy_proc.wait(timeout=a.seconds + 30)
            report(raw.read_text(), a.top, res["rps"], lines=a.lines)
    finally:
        server.stop()
        up.proc.stop()
    return 0


def report(collapsed: str, top: int, rps: float, *, lines: bool = False) -> None:
    """Aggregate py-spy's collapsed stacks into own and inclusive shares per function."""
    own: collections.Counter[str] = collections.Counter()
    by_line: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f.split(" (")[0] + " " + f.split("/")[-1].split(":")[0].rstrip(")")
                  for f in stack.split(";") if f]
        total += n
        if frames:
            own[frames[-1]] += n
            last = stack.split(";")[-1]
            by_line[last.split(" (")[0] + " " + last.split("/")[-1].rstrip(")")] += n
        for f in set(frames):
            incl[f] += n
    print(f"\n{total} samples while serving {rps:,.0f} req/s under py-spy (sampling slows it)")
    counters = [("own time", own), ("inclusive time", incl)]
    if lines:
        counters.append(("own time, per source line", by_line))
    for title, counter in counters:
        print(f"\n-- top {top} by {title} --")
        for name, n in counter.most_common(top):
            print(f"{100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    sys.exit(main())
