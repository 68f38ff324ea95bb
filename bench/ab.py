"""Two versions of wxhook under the same load, alternating: the same-run A/B of bench/README.md.

    .venv/bin/python bench/ab.py A B [--scenarios plain,aes] [--rounds 3] [--duration 5]
                                     [--warmup 2] [--workers 1]

A and B are git revisions (a branch, a commit) or `.` for this checkout as it is on disk.
Each revision is exported once (`git archive`, no worktree) and its wxhook code is put
ahead of this checkout's on the server's path; everything else (bench/, the venv, wrk, the
stand-in API) is this checkout's, so only the code under test differs. Round k runs A then
B, round k+1 B then A, so a machine that speeds up or slows down favours neither. Prints
every round's req/s and the server's CPU time a reply in the measured run (the steadier
figure when other work shares the machine), each round's B/A and the ratio of the medians;
writes them to bench/results/ab-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen
import run


def export(rev: str, into: Path) -> Path:
    """The revision's files under `into` (this checkout itself for `.`)."""
    if rev == ".":
        return run.ROOT
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=run.ROOT,
                         check=True, capture_output=True, text=True).stdout.strip()
    dest = into / sha[:12]
    if not dest.exists():
        archive = subprocess.run(["git", "archive", sha, "handlers", "service"], cwd=run.ROOT,
                                 check=True, capture_output=True).stdout
        dest.mkdir(parents=True)
        tar = dest / "src.tar"
        tar.write_bytes(archive)
        with tarfile.open(tar) as tf:
            tf.extractall(dest, filter="data")
        tar.unlink()
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--scenarios", default="plain")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--label", default="", help="a name for this comparison in the output")
    a = p.parse_args(argv)
    scenarios = a.scenarios.split(",")
    ncpu = os.cpu_count() or 1
    if a.workers > 1 or ncpu < 2:
        plan = run.Plan(["wxhook"], scenarios, a.duration, a.warmup, a.workers,
                        server_cpus=f"0-{ncpu - 1}", load_cpus=f"0-{ncpu - 1}",
                        load_threads=min(2, ncpu), upstream_cpus=None)
    else:
        plan = run.Plan(["wxhook"], scenarios, a.duration, a.warmup, a.workers,
                        server_cpus="0", load_cpus="1", load_threads=1, upstream_cpus="1")
    creds, seq = gen.Creds(), gen.Sequence()
    run.LOGS.mkdir(parents=True, exist_ok=True)
    rps: dict[str, dict[str, list[float]]] = {s: {"A": [], "B": []} for s in scenarios}
    rss: dict[str, dict[str, list[float]]] = {s: {"A": [], "B": []} for s in scenarios}
    cpu: dict[str, dict[str, list[float]]] = {s: {"A": [], "B": []} for s in scenarios}
    loads: list[str] = []
    with tempfile.TemporaryDirectory(prefix="wxhook-ab-") as src_dir:
        srcs = {"A": export(a.a, Path(src_dir)), "B": export(a.b, Path(src_dir))}
        up = run.Upstream(creds, plan.upstream_cpus)
        try:
            shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
            with tempfile.TemporaryDirectory(prefix="wxhook-bench-", dir=shm) as tmp:
                for k in range(a.rounds):
                    order = ("A", "B") if k % 2 == 0 else ("B", "A")
                    for scenario in scenarios:
                        for side in order:
                            loads.append(Path("/proc/loadavg").read_text().split()[0])
                            os.environ["BENCH_WXHOOK_SRC"] = str(srcs[side])
                            r = run.bench_one(plan, "wxhook", scenario, up, creds, seq, tmp)
                            if not r["ok"] or r["errors"]:
                                print(f"{side} {scenario} round {k + 1} FAILED: "
                                      f"{r.get('error') or r['errors']}", flush=True)
                                return 1
                            rps[scenario][side].append(r["rps"])
                            rss[scenario][side].append(r["peak_rss_mb"])
                            cpu[scenario][side].append(r["cpu_us_per_req"])
                            print(f"round {k + 1} {scenario:9} {side} ({getattr(a, side.lower())})"
                                  f": {r['rps']:,.0f} req/s  {r['cpu_us_per_req']} us CPU a "
                                  f"reply  p99 {r['p99_ms']:.1f} ms  "
                                  f"RSS {r['peak_rss_mb']} MB  load {loads[-1]}", flush=True)
        finally:
            up.proc.stop()
            os.environ.pop("BENCH_WXHOOK_SRC", None)
    summary: dict[str, Any] = {"a": a.a, "b": a.b, "label": a.label, "rounds": a.rounds,
                               "duration": a.duration, "warmup": a.warmup,
                               "workers": a.workers, "loadavg": loads,
                               "when": time.strftime("%Y-%m-%d %H:%M:%S"), "scenarios": {}}
    print(f"\n{a.label or (a.a + ' vs ' + a.b)}: B/A per round, and of the medians")
    for s in scenarios:
        ra, rb = rps[s]["A"], rps[s]["B"]
        pairs = [b / x for x, b in zip(ra, rb, strict=True)]
        ratio = statistics.median(rb) / statistics.median(ra)
        ca, cb = cpu[s]["A"], cpu[s]["B"]
        cpairs = [b / x for x, b in zip(ca, cb, strict=True)]
        cratio = statistics.median(cb) / statistics.median(ca)
        summary["scenarios"][s] = {"A": ra, "B": rb, "pair_ratios": pairs,
                                   "median_ratio": ratio, "rss_A": rss[s]["A"],
                                   "rss_B": rss[s]["B"], "cpu_us_A": ca, "cpu_us_B": cb,
                                   "cpu_pair_ratios": cpairs, "cpu_median_ratio": cratio}
        print(f"  {s} req/s: A {' / '.join(f'{x:,.0f}' for x in ra)}   "
              f"B {' / '.join(f'{x:,.0f}' for x in rb)}   "
              f"B/A {' '.join(f'{x:.3f}' for x in pairs)}   medians {ratio:.3f} "
              f"({(ratio - 1) * 100:+.1f}%)")
        print(f"  {s} us CPU a reply: A {' / '.join(f'{x}' for x in ca)}   "
              f"B {' / '.join(f'{x}' for x in cb)}   "
              f"B/A {' '.join(f'{x:.3f}' for x in cpairs)}   medians {cratio:.3f} "
              f"({(cratio - 1) * 100:+.1f}%)")
    out = run.RESULTS / "ab-latest.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
