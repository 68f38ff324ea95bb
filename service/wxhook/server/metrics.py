"""Prometheus metrics: every one wxhook exports, on one registry per app.

What an account does (its pushes, WeChat API calls, token, deliveries) carries an `account`
label: the name from the accounts file, or `default` for the one account of WECHAT_*. Its
values are the file's names only (an unknown name is 404 before anything is counted), so
the number of series is bounded by the file. What the deployment shares (Redis, readiness,
rules files, suppressed log lines) has no account label.
"""

from __future__ import annotations

import copy
import os
from functools import cached_property
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 4.5, 5, 10)
DEFAULT_ACCOUNT = "default"  # the account of WECHAT_*, without an accounts file
M = TypeVar("M", bound=MetricWrapperBase)


class Bound(Generic[M]):
    """A metric whose first label is the account's: `.labels()` takes the others."""

    __slots__ = ("account", "family")

    def __init__(self, family: M, account: str) -> None:
        self.family = family
        self.account = account

    def labels(self, *values: str) -> M:
        """The child for this account and `values`."""
        return self.family.labels(self.account, *values)


class Metrics:
    """Every Prometheus metric wxhook exports, on one registry (per app, so tests isolate);
    the per-account ones bound to `default` (for_account binds another name)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode values live in mmap files; the registry only names them.
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        a = "account"
        self._pushes = Counter("wxhook_pushes", "Pushes answered, by type, event and outcome",
                               [a, "msg_type", "event", "outcome"], registry=r)
        self._push_latency = Histogram("wxhook_push_latency_seconds", "Time to answer a push",
                                       [a], buckets=_LATENCY_BUCKETS, registry=r)
        self._upstream_calls = Counter("wxhook_upstream_calls",
                                       "WeChat API calls by api and errcode",
                                       [a, "api", "errcode"], registry=r)
        self._upstream_latency = Histogram("wxhook_upstream_latency_seconds",
                                           "WeChat API call latency", [a, "api"],
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self._token_refreshes = Counter("wxhook_token_refreshes", "Access token fetches",
                                        [a, "reason", "result"], registry=r)
        self._token_age = Gauge("wxhook_token_age_seconds", "Age of the access token last used",
                                [a], registry=r, multiprocess_mode="max")
        self._dedup_hits = Counter("wxhook_dedup_hits",
                                   "Retried pushes answered from the first try", [a], registry=r)
        self._deadline_fallbacks = Counter("wxhook_deadline_fallbacks",
                                           "Pushes answered 'success' at the deadline", [a],
                                           registry=r)
        self._late_deliveries = Counter(
            "wxhook_late_deliveries", "Replies delivered through custom/send after the "
            "deadline", [a, "result"], registry=r)
        self._guard_failures = Counter("wxhook_guard_failures", "Pushes refused by the guard",
                                       [a, "reason"], registry=r)
        self._circuit_open = Gauge("wxhook_circuit_open", "1 while calls to an API are "
                                   "suspended", [a, "api"], registry=r, multiprocess_mode="max")
        self.store_fallbacks = Counter("wxhook_store_fallbacks",
                                       "Operations served locally because Redis was unreachable",
                                       registry=r)
        self.ready = Gauge("wxhook_ready", "1 when /readyz last answered ready", registry=r,
                           multiprocess_mode="min")
        # Faults every replica shares: counted and alerted here, never failing readiness.
        # The token is an account's (account="default" without a file); Redis is everyone's
        # (account="", which Prometheus stores as no account label at all).
        self.dependency_up = Gauge("wxhook_dependency_up", "0 while a dependency all "
                                   "instances share is failing (token, redis)",
                                   ["dependency", a], registry=r, multiprocess_mode="min")
        self.rules_reloads = Counter("wxhook_rules_reloads", "Rules file reloads, by result "
                                     "(failed: the file was refused, the old rules stay)",
                                     ["result"], registry=r)
        self.accounts_reloads = Counter(
            "wxhook_accounts_reloads", "Accounts file reloads, by result (failed: the file, "
            "or a rules file or handlers module it names, was refused; the old set stays)",
            ["result"], registry=r)
        self._follow_ups = Counter("wxhook_follow_ups", "reply_all replies after the first, "
                                   "sent by customer-service message", [a, "result"],
                                   registry=r)
        self._state_writes = Counter(
            "wxhook_state_writes", "Follower-state saves after a handler read it, by result "
            "(conflict: another push of the follower saved first; refused: too large or not "
            "JSON)", [a, "result"], registry=r)
        self.log_lines_suppressed = Counter(
            "wxhook_log_lines_suppressed", "Warning lines left out by the per-second bound "
            "(a flood of refused pushes)", ["event"], registry=r)
        # The token authority (WXHOOK_INTERNAL_KEY). account: a name of the deployment's
        # (else "other"); caller: the X-Wxhook-Caller name, bounded (authority.py).
        self.internal_token_requests = Counter(
            "wxhook_internal_token_requests", "Token authority requests, by account, caller, "
            "action (get, invalid, docs) and outcome", ["account", "caller", "action",
                                                        "outcome"], registry=r)
        self.multiprocess = multiproc
        self._bind(DEFAULT_ACCOUNT)

    def for_account(self, account: str) -> Metrics:
        """These metrics (the same registry and series) with the per-account ones bound to
        `account`, a name from the accounts file."""
        view = copy.copy(self)
        view._bind(account)
        return view

    def forget_account(self, account: str) -> None:
        """An account no longer served (removed from the file): its gauges set back to
        healthy and dropped, so no alert stays on the last value it had. Its counters stay:
        they only stop growing. (In multiprocess mode the files keep the healthy value.)"""
        for gauge, order, healthy in ((self.dependency_up, ("dependency", "account"), 1.0),
                                      (self._token_age, ("account",), 0.0),
                                      (self._circuit_open, ("account", "api"), 0.0)):
            seen = {tuple(sample.labels[k] for k in order) for metric in gauge.collect()
                    for sample in metric.samples if sample.labels.get("account") == account}
            for values in seen:
                gauge.labels(*values).set(healthy)
                gauge.remove(*values)

    def _bind(self, account: str) -> None:
        self.account = account
        for name in _CHILDREN:  # a copy's children are its own account's
            self.__dict__.pop(name, None)
        self.pushes = Bound(self._pushes, account)
        self.upstream_calls = Bound(self._upstream_calls, account)
        self.upstream_latency = Bound(self._upstream_latency, account)
        self.token_refreshes = Bound(self._token_refreshes, account)
        self.late_deliveries = Bound(self._late_deliveries, account)
        self.guard_failures = Bound(self._guard_failures, account)
        self.circuit_open = Bound(self._circuit_open, account)
        self.follow_ups = Bound(self._follow_ups, account)
        self.state_writes = Bound(self._state_writes, account)

    # The metrics with no label but the account's: their child is taken on first use (an
    # accounts file's deployment shows no `default` series) and kept, so the push path then
    # touches it as it touched the unlabelled metric.

    @cached_property
    def push_latency(self) -> Histogram:
        """wxhook_push_latency_seconds of this account."""
        return self._push_latency.labels(self.account)

    @cached_property
    def token_age(self) -> Gauge:
        """wxhook_token_age_seconds of this account."""
        return self._token_age.labels(self.account)

    @cached_property
    def dedup_hits(self) -> Counter:
        """wxhook_dedup_hits_total of this account."""
        return self._dedup_hits.labels(self.account)

    @cached_property
    def deadline_fallbacks(self) -> Counter:
        """wxhook_deadline_fallbacks_total of this account."""
        return self._deadline_fallbacks.labels(self.account)


_CHILDREN = ("push_latency", "token_age", "dedup_hits", "deadline_fallbacks")
