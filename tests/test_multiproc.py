"""A dead worker's Prometheus files (service/multiproc.py): retired without a count lost."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from wxhook.server.multiproc import _locked, exposition, retire

LIVE, DEAD, DEAD_TOO = 4194301, 4194302, 4194303  # pids the files are named after


def _write(directory: Path, kind: str, pid: int, values: dict[tuple[str, str, str], float]) -> None:
    """A worker's file as prometheus_client writes it: (metric, sample, label value) -> value."""
    name = f"{kind}_max_{pid}.db" if kind == "gauge" else f"{kind}_{pid}.db"
    d = MmapedDict(str(directory / name))
    try:
        for (metric, sample, label), value in values.items():
            labelnames, labelvalues = (["le"], [label]) if sample.endswith("_bucket") else \
                (["outcome"], [label]) if label else ([], [])
            d.write_value(mmap_key(metric, sample, labelnames, labelvalues, "help"), value, 0.0)
    finally:
        d.close()


def _worker(directory: Path, pid: int, pushes: float, seconds: float) -> None:
    _write(directory, "counter", pid, {("wxhook_pushes", "wxhook_pushes_total", "ok"): pushes})
    _write(directory, "histogram", pid, {
        ("wxhook_push_latency_seconds", "wxhook_push_latency_seconds_bucket", "0.5"): pushes,
        ("wxhook_push_latency_seconds", "wxhook_push_latency_seconds_bucket", "+Inf"): 0.0,
        ("wxhook_push_latency_seconds", "wxhook_push_latency_seconds_sum", ""): seconds})
    _write(directory, "summary", pid, {("wxhook_x", "wxhook_x_count", ""): pushes})
    _write(directory, "gauge", pid, {("wxhook_ready", "wxhook_ready", ""): 1.0})


def _samples(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition(str(directory)).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_dead_workers_counts_stay_in_the_totals_and_its_files_go(tmp_path):
    _worker(tmp_path, LIVE, pushes=5, seconds=0.5)
    _worker(tmp_path, DEAD, pushes=7, seconds=0.7)
    _worker(tmp_path, DEAD_TOO, pushes=11, seconds=1.1)
    before = _samples(tmp_path)
    assert before[("wxhook_pushes_total", (("outcome", "ok"),))] == 23
    retire(str(tmp_path), DEAD)
    retire(str(tmp_path), DEAD_TOO)  # into the same retired totals
    after = _samples(tmp_path)
    # Counters, histograms (buckets, sum, count) and summaries: not a count lost or doubled.
    assert {k: v for k, v in after.items() if k[0] != "wxhook_ready"} == \
        {k: v for k, v in before.items() if k[0] != "wxhook_ready"}
    assert after[("wxhook_push_latency_seconds_count", ())] == 23
    # Only the live worker's files and one retired file per additive type are read now.
    assert sorted(p.name for p in tmp_path.glob("*.db")) == sorted([
        f"counter_{LIVE}.db", f"histogram_{LIVE}.db", f"summary_{LIVE}.db",
        f"gauge_max_{LIVE}.db", "counter_retired.db", "histogram_retired.db",
        "summary_retired.db"])
    # A dead worker's gauges are dropped, not merged: "ready" is the live worker's.
    _write(tmp_path, "gauge", DEAD, {("wxhook_ready", "wxhook_ready", ""): 0.0})
    retire(str(tmp_path), DEAD)
    assert _samples(tmp_path)[("wxhook_ready", ())] == 1.0
    assert not list(tmp_path.glob(f"*_{DEAD}.db"))


def test_a_scrape_waits_for_a_retirement_in_progress(tmp_path):
    _worker(tmp_path, LIVE, pushes=5, seconds=0.5)
    scraped = threading.Event()

    def scrape() -> None:
        exposition(str(tmp_path))
        scraped.set()

    with _locked(str(tmp_path), fcntl.LOCK_EX):  # as retire() holds it
        thread = threading.Thread(target=scrape)
        thread.start()
        # Between two files of a retirement a scrape would count a worker twice or not at
        # all (a counter going back, which Prometheus reads as a reset).
        assert not scraped.wait(0.5)
    assert scraped.wait(10)
    thread.join()
