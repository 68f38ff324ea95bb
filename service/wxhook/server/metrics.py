"""Prometheus metrics: every one wxhook exports, on one registry per app."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 4.5, 5, 10)


class Metrics:
    """Every Prometheus metric wxhook exports, on one registry (per app, so tests isolate)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode values live in mmap files; the registry only names them.
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.pushes = Counter("wxhook_pushes", "Pushes answered, by type, event and outcome",
                              ["msg_type", "event", "outcome"], registry=r)
        self.push_latency = Histogram("wxhook_push_latency_seconds", "Time to answer a push",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_calls = Counter("wxhook_upstream_calls",
                                      "WeChat API calls by api and errcode",
                                      ["api", "errcode"], registry=r)
        self.upstream_latency = Histogram("wxhook_upstream_latency_seconds",
                                          "WeChat API call latency", ["api"],
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.token_refreshes = Counter("wxhook_token_refreshes", "Access token fetches",
                                       ["reason", "result"], registry=r)
        self.token_age = Gauge("wxhook_token_age_seconds", "Age of the access token last used",
                               registry=r, multiprocess_mode="max")
        self.dedup_hits = Counter("wxhook_dedup_hits", "Retried pushes answered from the first try",
                                  registry=r)
        self.deadline_fallbacks = Counter("wxhook_deadline_fallbacks",
                                          "Pushes answered 'success' at the deadline", registry=r)
        self.late_deliveries = Counter("wxhook_late_deliveries",
                                       "Replies delivered through custom/send after the deadline",
                                       ["result"], registry=r)
        self.guard_failures = Counter("wxhook_guard_failures", "Pushes refused by the guard",
                                      ["reason"], registry=r)
        self.circuit_open = Gauge("wxhook_circuit_open", "1 while calls to an API are suspended",
                                  ["api"], registry=r, multiprocess_mode="max")
        self.store_fallbacks = Counter("wxhook_store_fallbacks",
                                       "Operations served locally because Redis was unreachable",
                                       registry=r)
        self.ready = Gauge("wxhook_ready", "1 when /readyz last answered ready", registry=r,
                           multiprocess_mode="min")
        # Faults every replica shares: counted and alerted here, never failing readiness.
        self.dependency_up = Gauge("wxhook_dependency_up", "0 while a dependency all "
                                   "instances share is failing (token, redis)", ["dependency"],
                                   registry=r, multiprocess_mode="min")
        self.rules_reloads = Counter("wxhook_rules_reloads", "Rules file reloads, by result "
                                     "(failed: the file was refused, the old rules stay)",
                                     ["result"], registry=r)
        self.accounts_reloads = Counter(
            "wxhook_accounts_reloads", "Accounts file reloads, by result (failed: the file, "
            "or a rules file or handlers module it names, was refused; the old set stays)",
            ["result"], registry=r)
        self.follow_ups = Counter("wxhook_follow_ups", "reply_all replies after the first, "
                                  "sent by customer-service message", ["result"], registry=r)
        self.state_writes = Counter(
            "wxhook_state_writes", "Follower-state saves after a handler read it, by result "
            "(conflict: another push of the follower saved first; refused: too large or not "
            "JSON)", ["result"], registry=r)
        self.log_lines_suppressed = Counter(
            "wxhook_log_lines_suppressed", "Warning lines left out by the per-second bound "
            "(a flood of refused pushes)", ["event"], registry=r)
        # Only with an accounts file; the label is an account's name from that file, never
        # a name from a request (an unknown one is 404 before any count).
        self.account_pushes = Counter(
            "wxhook_account_pushes", "Pushes per account of WXHOOK_ACCOUNTS, by outcome "
            "(as wxhook_pushes_total's)", ["account", "outcome"], registry=r)
        # The token authority (WXHOOK_INTERNAL_KEY). account: a name of the deployment's
        # (else "other"); caller: the X-Wxhook-Caller name, bounded (authority.py).
        self.internal_token_requests = Counter(
            "wxhook_internal_token_requests", "Token authority requests, by account, caller, "
            "action (get, invalid, docs) and outcome", ["account", "caller", "action",
                                                        "outcome"], registry=r)
        self.multiprocess = multiproc
