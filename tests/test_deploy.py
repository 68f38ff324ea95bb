"""Static and tool-backed checks of the deployment files in deploy/."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

# The metric names the server exports (service/metrics.py); dashboards and alerts may use
# nothing else from the wxhook_ namespace.
KNOWN_METRICS = frozenset(
    {
        "wxhook_pushes_total",
        "wxhook_push_latency_seconds",
        "wxhook_upstream_calls_total",
        "wxhook_upstream_latency_seconds",
        "wxhook_token_refreshes_total",
        "wxhook_token_age_seconds",
        "wxhook_dedup_hits_total",
        "wxhook_deadline_fallbacks_total",
        "wxhook_late_deliveries_total",
        "wxhook_rules_reloads_total",
        "wxhook_accounts_reloads_total",
        "wxhook_follow_ups_total",
        "wxhook_guard_failures_total",
        "wxhook_circuit_open",
        "wxhook_store_fallbacks_total",
        "wxhook_ready",
        "wxhook_dependency_up",
        "wxhook_log_lines_suppressed_total",
        "wxhook_internal_token_requests_total",
    }
)
HISTOGRAMS = frozenset({"wxhook_push_latency_seconds", "wxhook_upstream_latency_seconds"})
_METRIC_RE = re.compile(r"wxhook_[a-z_]+")


def unknown_metrics(expr: str) -> set[str]:
    """Names in expr that are not exported metrics (histogram suffixes allowed)."""
    bad = set()
    for name in _METRIC_RE.findall(expr):
        if name in KNOWN_METRICS:
            continue
        base, _, suffix = name.rpartition("_")
        if suffix in {"bucket", "sum", "count"} and base in HISTOGRAMS:
            continue
        bad.add(name)
    return bad


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_one(path: Path) -> dict[str, Any]:
    docs = load_yaml_docs(path)
    assert len(docs) == 1, f"{path.name}: expected one document, got {len(docs)}"
    assert isinstance(docs[0], dict)
    return docs[0]


# ----------------------------------------------------------------------------- checker


@pytest.mark.parametrize(
    ("expr", "bad"),
    [
        ("sum(rate(wxhook_pushes_total[5m]))", set()),
        ("rate(wxhook_push_latency_seconds_bucket[5m])", set()),
        ("rate(wxhook_push_latency_seconds_count[5m])", set()),
        ("rate(wxhook_pushes_total_bucket[5m])", {"wxhook_pushes_total_bucket"}),
        ("wxhook_requests_total + wxhook_ready", {"wxhook_requests_total"}),
        ('up{job="wxhook"}', set()),
    ],
)
def test_metric_checker_flags_unknown_names(expr: str, bad: set[str]) -> None:
    assert unknown_metrics(expr) == bad


# ------------------------------------------------------------------------------- YAML


def all_yaml_files() -> list[Path]:
    files = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
    assert files, "no YAML files under deploy/"
    return files


@pytest.mark.parametrize("path", all_yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_loads(path: Path) -> None:
    docs = load_yaml_docs(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        assert isinstance(doc, dict)


# ----------------------------------------------------------------------------- compose


def test_compose_services_and_healthchecks() -> None:
    compose = load_one(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    app, redis = services["wxhook"], services["redis"]

    assert app["build"]["dockerfile"] == "deploy/Dockerfile"
    assert app["env_file"]
    assert app["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(app["healthcheck"]["test"])
    assert app["restart"] in {"always", "unless-stopped", "on-failure"}

    assert redis["image"].startswith("redis:7")
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "ports" not in redis, "Redis must not be published on the host"
    assert set(compose["volumes"]) >= {"redis-data", "wxhook-data"}


# -------------------------------------------------------------------------------- k8s


def k8s(name: str) -> dict[str, Any]:
    return load_one(DEPLOY / "k8s" / name)


def test_deployment_probes_security_and_env() -> None:
    dep = k8s("deployment.yaml")
    assert dep["apiVersion"] == "apps/v1" and dep["kind"] == "Deployment"
    spec = dep["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["terminationGracePeriodSeconds"] == 20
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0

    (c,) = pod["containers"]
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The minimal answer: ?verbose is for an operator on the pod, and refuses the kubelet.
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    preStop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert preStop[0] == "sleep" and 0 < int(preStop[1]) < pod["terminationGracePeriodSeconds"]

    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]

    refs = {next(iter(e.values()))["name"] for e in c["envFrom"]}
    assert refs == {"wxhook-secrets", "wxhook-config"}

    # Every writable path is an emptyDir, including the multiprocess metrics dir; the rest
    # (the accounts file's ConfigMap) is mounted read-only.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env["PROMETHEUS_MULTIPROC_DIR"] in mounts
    for mount in c["volumeMounts"]:
        assert "emptyDir" in volumes[mount["name"]] or mount.get("readOnly") is True, mount

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == 8000


def test_service_targets_the_pods() -> None:
    svc = k8s("service.yaml")
    dep = k8s("deployment.yaml")
    assert svc["kind"] == "Service"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_hpa_targets_deployment_on_cpu() -> None:
    hpa = k8s("hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "wxhook",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100


def test_pdb_min_available() -> None:
    pdb = k8s("pdb.yaml")
    dep = k8s("deployment.yaml")
    assert pdb["apiVersion"] == "policy/v1" and pdb["kind"] == "PodDisruptionBudget"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_configmap_and_example_secret() -> None:
    cm = k8s("configmap.yaml")
    assert cm["metadata"]["name"] == "wxhook-config"
    assert cm["data"]["WXHOOK_PROFILE_DB"] == "/data/profiles.sqlite3"
    secret = k8s("secret.example.yaml")
    assert secret["metadata"]["name"] == "wxhook-secrets"
    values = secret["stringData"]
    for key in (
        "WECHAT_APP_ID",
        "WECHAT_APP_SECRET",
        "WECHAT_TOKEN",
        "SESSION_SECRET",
        "REDIS_URL",
    ):
        assert "REPLACE_ME" in values[key], f"{key} must be an obvious placeholder"
    # No secret material in the ConfigMap.
    assert not {"WECHAT_APP_SECRET", "WECHAT_TOKEN", "SESSION_SECRET"} & set(cm["data"])
    text = (DEPLOY / "k8s" / "configmap.yaml").read_text(encoding="utf-8")
    assert "managed Redis" in text


def test_kustomization_lists_existing_files_but_not_the_example_secret() -> None:
    kust = k8s("kustomization.yaml")
    for res in kust["resources"]:
        assert (DEPLOY / "k8s" / res).is_file(), res
    assert "secret.example.yaml" not in kust["resources"]


# --------------------------------------------------------------------------- accounts

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def valid_value(var: str) -> str:
    """A value of the right shape for the ${VAR} (placeholders are not: REPLACE_ME_...)."""
    if var.endswith("AES_KEY"):
        return "A" * 43
    if var.endswith("TOKEN"):
        return "Tok" + str(abs(hash(var)) % 10**8)
    return f"secret-of-{var.lower()}"


def test_k8s_accounts_file_names_only_secret_vars_and_parses(tmp_path: Path) -> None:
    from wxhook.server.accounts import load_accounts

    cm = k8s("accounts-configmap.yaml")
    assert cm["metadata"]["name"] == "wxhook-accounts"
    text = cm["data"]["accounts.yaml"]
    used = set(_VAR.findall(text))
    secret = k8s("secret.example.yaml")["stringData"]
    assert used and used <= set(secret), f"not in secret.example.yaml: {used - set(secret)}"
    for var in used:
        assert "REPLACE_ME" in secret[var], f"{var} must be an obvious placeholder"
    # No secret in the ConfigMap: every secret field is a ${VAR}.
    for field in ("app_secret", "token", "encoding_aes_key"):
        for value in re.findall(rf"{field}: *(\S+)", text):
            assert _VAR.fullmatch(value), (field, value)
    path = tmp_path / "accounts.yaml"
    path.write_text(text, encoding="utf-8")
    accounts = load_accounts(str(path), {var: valid_value(var) for var in used})
    assert list(accounts) == ["shop", "news"]


def test_k8s_mounts_the_accounts_file_where_the_configmap_points() -> None:
    dep = k8s("deployment.yaml")
    pod = dep["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("configMap", {}).get("name")
                 == "wxhook-accounts"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    # A subPath mount never sees a ConfigMap change: the reload would not either.
    assert "subPath" not in mount and mount["readOnly"] is True
    text = (DEPLOY / "k8s" / "configmap.yaml").read_text(encoding="utf-8")
    (where,) = re.findall(r'#\s*WXHOOK_ACCOUNTS:\s*"([^"]+)"', text)
    assert where == f"{mount['mountPath']}/accounts.yaml"
    assert "accounts-configmap.yaml" in k8s("kustomization.yaml")["resources"]
    # Off by default: the one WECHAT_* account serves at /wechat as before.
    assert "WXHOOK_ACCOUNTS" not in k8s("configmap.yaml")["data"]


def test_compose_accounts_override_mounts_a_folder() -> None:
    base = load_one(DEPLOY / "docker-compose.yml")
    assert "WXHOOK_ACCOUNTS" not in base["services"]["wxhook"]["environment"]
    app = load_one(DEPLOY / "docker-compose.accounts.yml")["services"]["wxhook"]
    where = app["environment"]["WXHOOK_ACCOUNTS"]
    (volume,) = app["volumes"]
    source, target, mode = volume.split(":")
    # The folder: a bind mount of a single file keeps showing the file it was made with.
    assert (source, mode) == ("../accounts", "ro")
    assert where == f"{target}/accounts.yaml"


def test_systemd_unit_says_where_the_accounts_file_and_its_vars_go() -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert "WXHOOK_ACCOUNTS=/etc/wxhook/accounts.yaml" in text
    assert "systemctl restart wxhook" in text and "systemctl reload wxhook" in text


def test_accounts_example_parses_when_its_vars_are_set(tmp_path: Path) -> None:
    from wxhook.server.accounts import load_accounts

    example = DEPLOY.parent / "accounts.example.yaml"
    used = set(_VAR.findall(example.read_text(encoding="utf-8")))
    env_example = (DEPLOY.parent / ".env.example").read_text(encoding="utf-8")
    assert "WXHOOK_ACCOUNTS" in env_example
    accounts = load_accounts(str(example), {var: valid_value(var) for var in used})
    assert list(accounts) == ["shop", "news"]


# The token authority's routes: the account's access token, for the owner's own systems.
INTERNAL_PATHS = ("/internal/accounts/default/token", "/internal/accounts/shop/token/invalid",
                  "/internal/docs", "/internal/openapi.json")
PUBLIC_PATHS = {"/wechat", "/wechat/", "/oauth", "/me", "/me/", "/healthz"}


def ingress_routes(path: str, rule: dict[str, Any]) -> bool:
    """Whether an Ingress path rule routes `path` (Exact, or Prefix by path elements)."""
    if rule["pathType"] == "Exact":
        return bool(path == rule["path"])
    prefix = rule["path"].rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or prefix == ""


def test_k8s_publishes_only_the_public_paths() -> None:
    ingresses = load_yaml_docs(DEPLOY / "k8s" / "ingress.yaml")
    assert ingresses and all(i["kind"] == "Ingress" for i in ingresses)
    svc = k8s("service.yaml")
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    rules = []
    ingress_of: dict[str, list[dict[str, Any]]] = {}  # each Ingress's path rules
    for ing in ingresses:
        assert "defaultBackend" not in ing["spec"]
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == svc["metadata"]["name"]
                assert path["backend"]["service"]["port"]["name"] in port_names
                rules.append(path)
                ingress_of.setdefault(ing["metadata"]["name"], []).append(path)
    assert {r["path"] for r in rules} <= PUBLIC_PATHS
    for path in (*INTERNAL_PATHS, "/metrics", "/readyz", "/"):
        assert not any(ingress_routes(path, r) for r in rules), path
    for path in ("/wechat", "/wechat/shop", "/oauth/login", "/me"):  # the matcher works
        assert any(ingress_routes(path, r) for r in rules), path
    # Pushes answered before WeChat gives up; the OAuth pages may wait longer.
    timeouts = {i["metadata"]["name"]: int(i["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/proxy-read-timeout"]) for i in ingresses}
    assert timeouts["wxhook"] < 5
    # Every OAuth page, an account's of the accounts file included (/oauth/NAME/...,
    # /me/NAME: the default `next` after its sign-in), through the OAuth Ingress and its
    # longer timeouts only.
    for path in ("/oauth/login", "/oauth/callback", "/me", "/oauth/shop/login",
                 "/oauth/shop/callback", "/me/shop"):
        routing = {name for name, own in ingress_of.items()
                   if any(ingress_routes(path, r) for r in own)}
        assert routing == {"wxhook-oauth"}, path
    assert timeouts["wxhook-oauth"] > timeouts["wxhook"]
    # Nothing else publishes the pods: a ClusterIP Service, no host ports.
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    (c,) = k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert all("hostPort" not in p for p in c["ports"])
    assert "ingress.yaml" in k8s("kustomization.yaml")["resources"]
    # The key is a secret: never in the ConfigMap.
    assert "WXHOOK_INTERNAL_KEY" not in k8s("configmap.yaml")["data"]


# ---------------------------------------------------------------------------- grafana


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        exprs.append(q["query"] if isinstance(q, dict) else str(q or ""))
    return exprs


def test_dashboard_is_importable_and_uses_known_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "wxhook-dashboard.json").read_text(encoding="utf-8"))
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"]
    assert {i["name"] for i in dash["__inputs"]} == {"DS_PROMETHEUS"}

    exprs = dashboard_exprs(dash)
    assert len(exprs) >= 10
    for expr in exprs:
        assert not unknown_metrics(expr), (expr, unknown_metrics(expr))

    used = {m for e in exprs for m in _METRIC_RE.findall(e)}
    required = {
        "wxhook_pushes_total",
        "wxhook_push_latency_seconds_bucket",
        "wxhook_upstream_calls_total",
        "wxhook_upstream_latency_seconds_bucket",
        "wxhook_token_refreshes_total",
        "wxhook_token_age_seconds",
        "wxhook_dedup_hits_total",
        "wxhook_deadline_fallbacks_total",
        "wxhook_late_deliveries_total",
        "wxhook_guard_failures_total",
        "wxhook_circuit_open",
        "wxhook_ready",
        "wxhook_dependency_up",
    }
    assert required <= used, required - used
    joined = "\n".join(exprs)
    assert "histogram_quantile(0.99" in joined and "histogram_quantile(0.50" in joined

    ids = []
    for p in dash["panels"]:
        ids.append(p["id"])
        assert {"h", "w", "x", "y"} <= p["gridPos"].keys()
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert p["targets"], p["title"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


# Metrics with an `account` label (service/wxhook/server/metrics.py): every panel that
# reads one is filtered by the dashboard's account variable.
PER_ACCOUNT = frozenset({
    "wxhook_pushes_total", "wxhook_push_latency_seconds", "wxhook_upstream_calls_total",
    "wxhook_upstream_latency_seconds", "wxhook_token_refreshes_total",
    "wxhook_token_age_seconds", "wxhook_dedup_hits_total", "wxhook_deadline_fallbacks_total",
    "wxhook_late_deliveries_total", "wxhook_guard_failures_total", "wxhook_circuit_open",
    "wxhook_follow_ups_total", "wxhook_state_writes_total", "wxhook_dependency_up"})
_SELECTOR_RE = re.compile(r"(wxhook_[a-z_]+)(\{[^}]*\})?")


def test_dashboard_filters_every_account_metric_by_the_account_variable() -> None:
    dash = json.loads((DEPLOY / "grafana" / "wxhook-dashboard.json").read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    account = variables["account"]
    assert "label_values(wxhook_pushes_total" in account["query"]["query"]
    assert account["query"]["query"].endswith(", account)")
    assert account["includeAll"] and account["multi"] and account["allValue"] == ".*"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    for panel in panels:
        for target in panel["targets"]:
            for name, selector in _SELECTOR_RE.findall(target["expr"]):
                base = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
                if base in PER_ACCOUNT:
                    # dependency_up's Redis row has no account: `$account|` keeps it.
                    assert 'account=~"$account' in selector, (panel["title"], target["expr"])
                else:
                    assert "account" not in selector, (panel["title"], target["expr"])
    by_account = [t["expr"] for p in panels for t in p["targets"]
                  if "by (account)" in t["expr"]]
    assert any("wxhook_pushes_total" in e for e in by_account)
    assert any("wxhook_dependency_up" in e for e in by_account)


# ------------------------------------------------------------------------- prometheus

ALERTS = DEPLOY / "prometheus" / "alerts.yml"


def alert_rules() -> list[dict[str, Any]]:
    doc = load_one(ALERTS)
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert rules
    return rules


def test_alerts_have_severity_summary_and_known_metrics() -> None:
    rules = alert_rules()
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 40, name
        assert not unknown_metrics(rule["expr"]), (name, unknown_metrics(rule["expr"]))


def test_alerts_cover_the_promised_conditions() -> None:
    by_expr = "\n".join(str(r["expr"]) for r in alert_rules())
    rules = {r["alert"]: r for r in alert_rules()}
    assert 'wxhook_token_refreshes_total{result="error"}' in by_expr
    assert 'wxhook_token_refreshes_total{result="ok"}' in by_expr
    assert "wxhook_deadline_fallbacks_total" in by_expr
    assert "wxhook_guard_failures_total" in by_expr
    assert "wxhook_circuit_open" in by_expr
    assert "histogram_quantile(0.99" in by_expr and "> 3" in by_expr
    assert rules["WxhookNotReady"]["for"] == "2m"
    assert rules["WxhookCircuitOpen"]["for"] == "5m"
    assert "up{" in by_expr
    # Faults all replicas share are alerted, since they never fail readiness.
    assert 'wxhook_dependency_up{dependency="token"}' in rules["WxhookAccessTokenUnavailable"][
        "expr"]
    assert 'wxhook_dependency_up{dependency="redis"}' in rules["WxhookRedisUnreachable"]["expr"]
    # What an account does is alerted per account; what all share is not.
    for name in ("WxhookAccessTokenUnavailable", "WxhookTokenRefreshFailing",
                 "WxhookTokenStale", "WxhookCircuitOpen", "WxhookDeadlineFallbacksRising",
                 "WxhookLateDeliveriesFailing", "WxhookGuardFailuresSpike",
                 "WxhookPushesRejected", "WxhookPushLatencyHigh"):
        expr = str(rules[name]["expr"])
        groupings = re.findall(r"by \(([^)]*)\)", expr)
        assert groupings and all("account" in g for g in groupings), name
        assert "{{ $labels.account }}" in rules[name]["annotations"]["summary"], name
    for name in ("WxhookNotReady", "WxhookRedisUnreachable", "WxhookRulesFileRefused",
                 "WxhookStoreFallbacks"):
        assert "account" not in str(rules[name]["expr"]), name
    assert 'wxhook_accounts_reloads_total{result="failed"}' in rules[
        "WxhookAccountsFileRefused"]["expr"]


def test_k8s_says_which_path_each_probe_uses_and_why() -> None:
    text = (DEPLOY / "k8s" / "deployment.yaml").read_text(encoding="utf-8")
    comments = "\n".join(line.strip() for line in text.splitlines()
                         if line.strip().startswith("#"))
    for probe, path in (("startup", "/healthz"), ("liveness", "/healthz"),
                        ("readiness", "/readyz")):
        assert f"# {probe}, {path}:" in comments, probe
    assert "every replica shares" in comments and "?verbose" in comments
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for row in ("| startup | `/healthz` |", "| liveness | `/healthz` |",
                "| readiness | `/readyz` |"):
        assert row in readme, row
    assert "/readyz?verbose" in readme and "X-Forwarded-For" in readme


def expected_alert(alertname: str, labels: dict[str, str]) -> dict[str, Any]:
    """exp_alerts entry for promtool: labels plus the rendered annotations."""
    rule = next(r for r in alert_rules() if r["alert"] == alertname)

    def render(text: str) -> str:
        return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], text)

    return {
        "exp_labels": {**labels, **rule["labels"]},
        "exp_annotations": {k: render(v) for k, v in rule["annotations"].items()},
    }


def promtool_tests() -> dict[str, Any]:
    """Synthetic series that must (and must not) fire the main alerts."""
    errors = ('wxhook_token_refreshes_total{job="wxhook",account="shop",reason="expired",'
              'result="error"}')
    oks = 'wxhook_token_refreshes_total{job="wxhook",account="shop",reason="expired",result="ok"}'
    news_oks = ('wxhook_token_refreshes_total{job="wxhook",account="news",reason="expired",'
                'result="ok"}')
    authority = 'wxhook_internal_token_requests_total{job="wxhook",account="default",action="get"'
    return {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": errors, "values": "0+1x20"},
                    {
                        "series": 'wxhook_ready{job="wxhook",instance="a:8000"}',
                        "values": "1 1 0x10",
                    },
                    {
                        "series": 'wxhook_circuit_open{job="wxhook",account="shop",'
                                  'api="user_info"}',
                        "values": "1x10",
                    },
                    {
                        "series": 'wxhook_dependency_up{job="wxhook",instance="a:8000",'
                                  'account="shop",dependency="token"}',
                        "values": "1 0x10",
                    },
                    {
                        "series": 'wxhook_dependency_up{job="wxhook",instance="a:8000",'
                                  'account="news",dependency="token"}',
                        "values": "1x15",
                    },
                    {
                        "series": 'wxhook_dependency_up{job="wxhook",instance="a:8000",'
                                  'dependency="redis"}',
                        "values": "1x3 0x10",
                    },
                    {
                        "series": 'wxhook_dependency_up{job="wxhook",instance="b:8000",'
                                  'dependency="redis"}',
                        "values": "1x15",
                    },
                    {   # a caller with a stale key, and another served as it should be
                        "series": authority + ',outcome="unauthorized",caller="other"}',
                        "values": "0+2x30",
                    },
                    {
                        "series": authority + ',outcome="ok",caller="crm"}',
                        "values": "0+9x30",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "WxhookTokenRefreshFailing",
                        "exp_alerts": [
                            expected_alert("WxhookTokenRefreshFailing",
                                           {"job": "wxhook", "account": "shop"})
                        ],
                    },
                    {
                        "eval_time": "1m",
                        "alertname": "WxhookNotReady",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "6m",
                        "alertname": "WxhookNotReady",
                        "exp_alerts": [
                            expected_alert(
                                "WxhookNotReady", {"job": "wxhook", "instance": "a:8000"}
                            )
                        ],
                    },
                    {
                        "eval_time": "2m",
                        "alertname": "WxhookAccessTokenUnavailable",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "4m",
                        "alertname": "WxhookAccessTokenUnavailable",
                        "exp_alerts": [
                            expected_alert("WxhookAccessTokenUnavailable",
                                           {"job": "wxhook", "instance": "a:8000",
                                            "account": "shop"})
                        ],
                    },
                    {
                        "eval_time": "7m",
                        "alertname": "WxhookRedisUnreachable",
                        "exp_alerts": [
                            expected_alert("WxhookRedisUnreachable",
                                           {"job": "wxhook", "instance": "a:8000"})
                        ],
                    },
                    {
                        "eval_time": "5m",
                        "alertname": "WxhookTokenAuthorityRefusing",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "25m",
                        "alertname": "WxhookTokenAuthorityRefusing",
                        "exp_alerts": [expected_alert("WxhookTokenAuthorityRefusing", {
                            "job": "wxhook", "account": "default", "caller": "other",
                            "outcome": "unauthorized"})],
                    },
                    {
                        "eval_time": "7m",
                        "alertname": "WxhookCircuitOpen",
                        "exp_alerts": [
                            expected_alert(
                                "WxhookCircuitOpen",
                                {"job": "wxhook", "account": "shop", "api": "user_info"}
                            )
                        ],
                    },
                ],
            },
            {
                # Errors alongside successes are transient: no alert.
                "interval": "1m",
                "input_series": [
                    {"series": errors, "values": "0+1x20"},
                    {"series": oks, "values": "0+1x20"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "WxhookTokenRefreshFailing",
                        "exp_alerts": [],
                    },
                ],
            },
            {
                # Another account's successes do not hide one account's failures.
                "interval": "1m",
                "input_series": [
                    {"series": errors, "values": "0+1x20"},
                    {"series": news_oks, "values": "0+1x20"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "WxhookTokenRefreshFailing",
                        "exp_alerts": [
                            expected_alert("WxhookTokenRefreshFailing",
                                           {"job": "wxhook", "account": "shop"})
                        ],
                    },
                ],
            },
        ],
    }


def test_promtool_checks_and_unit_tests_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus, or a release tarball)")
    check = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], check=False, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(json.dumps(promtool_tests(), indent=1), encoding="utf-8")
    run = subprocess.run(
        [promtool, "test", "rules", str(tests)], check=False, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


# ------------------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(buf)
            buf = ""
    stages: list[list[str]] = []
    for ins in logical:
        if ins.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_dockerfile_is_multistage_slim_nonroot_with_healthcheck() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        assert "slim" in stage[0], stage[0]
    assert any("pip wheel" in ins for ins in stages[0])

    final = stages[-1]
    final_text = "\n".join(final).lower()
    for compiler in ("build-essential", "gcc", "g++", "clang", "-dev "):
        assert compiler not in final_text, f"{compiler} in the final stage"

    users = [ins.split(None, 1)[1].strip() for ins in final if ins.upper().startswith("USER ")]
    assert users, "final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}

    (health,) = [ins for ins in final if ins.upper().startswith("HEALTHCHECK ")]
    assert "python" in health and "/healthz" in health and "curl" not in health

    assert any(ins.upper().startswith("EXPOSE ") and "8000" in ins for ins in final)
    assert any(ins.upper().startswith("VOLUME ") and "/data" in ins for ins in final)
    (cmd,) = [ins for ins in final if ins.upper().startswith("CMD ")]
    assert json.loads(cmd[4:]) == ["wxhook", "serve", "--host", "0.0.0.0", "--port", "8000"]


def test_dockerfile_copies_what_the_build_needs() -> None:
    stages = dockerfile_stages()
    copies = " ".join(ins for ins in stages[0] if ins.upper().startswith("COPY "))
    for needed in ("pyproject.toml", "README.md", "service", "handlers"):
        assert needed in copies, needed


# ---------------------------------------------------------------------------- systemd

UNIT = DEPLOY / "systemd" / "wxhook.service"


def test_systemd_unit_keys() -> None:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(UNIT, encoding="utf-8")
    svc = cp["Service"]
    assert svc["ExecStart"].startswith("/opt/wxhook/.venv/bin/wxhook serve")
    assert "--workers 2" in svc["ExecStart"]
    assert svc["EnvironmentFile"] == "/etc/wxhook/wxhook.env"
    assert svc["User"] not in {"root", "0"}
    assert svc["Restart"] == "on-failure"
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict"
    assert svc["PrivateTmp"] == "yes"
    assert "/var/lib/wxhook" in svc["ReadWritePaths"]
    stop = svc["TimeoutStopSec"].removesuffix("s")
    assert 15 <= int(stop) <= 60
    assert cp["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in cp["Unit"]["After"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    # verify insists the ExecStart binary exists; stand in a harmless executable.
    fake = tmp_path / "wxhook"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "wxhook.service"
    unit.write_text(
        UNIT.read_text(encoding="utf-8").replace("/opt/wxhook/.venv/bin/wxhook", str(fake))
    )
    proc = subprocess.run([tool, "verify", str(unit)], check=False, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    # Problems with the unit itself are reported as "<file>:<line>: ..." or name the unit.
    unit_errors = [ln for ln in out.splitlines() if "wxhook.service" in ln]
    assert not unit_errors, out
    if proc.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run in this environment: {out.strip()[:300]}")


# ------------------------------------------------------------------------------ nginx

NGINX = DEPLOY / "nginx" / "wxhook.conf"


def nginx_seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert m, value
    n = int(m.group(1))
    return {"ms": n / 1000, "s": n, None: n, "m": n * 60}[m.group(2)]


def nginx_servers(text: str) -> list[str]:
    """Bodies of the top-level server blocks (brace matching, comments stripped)."""
    text = re.sub(r"#[^\n]*", "", text)
    bodies = []
    for m in re.finditer(r"\bserver\s*\{", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        bodies.append(text[m.end() : i - 1])
    return bodies


def test_nginx_limits_timeouts_and_locations() -> None:
    servers = nginx_servers(NGINX.read_text(encoding="utf-8"))
    assert len(servers) == 2
    plain = next(s for s in servers if re.search(r"listen\s+80;", s))
    tls = next(s for s in servers if re.search(r"listen\s+443\s+ssl", s))
    for body in (plain, tls):
        assert re.search(r"client_max_body_size\s+256k;", body)
        # Slow senders and large headers are the proxy's to stop (README: Security).
        for timeout in ("client_header_timeout", "client_body_timeout", "send_timeout"):
            found = re.search(rf"{timeout}\s+(\S+);", body)
            assert found and nginx_seconds(found.group(1)) <= 5, timeout
        assert re.search(r"large_client_header_buffers\s+\d+\s+(\d+)k;", body)
        read = re.search(r"proxy_read_timeout\s+(\S+);", body)
        connect = re.search(r"proxy_connect_timeout\s+(\S+);", body)
        assert read and nginx_seconds(read.group(1)) < 5
        assert connect and nginx_seconds(connect.group(1)) <= 1
        for header in ("X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto"):
            assert f"proxy_set_header {header}" in body
    # /wechat only over TLS; port 80 sends everything but the ACME challenge to https.
    assert re.search(r"location\s+=?\s*/wechat\s*\{[^}]*proxy_pass\s+http://", tls)
    # With an accounts file: /wechat/NAME.
    assert re.search(r"location\s+/wechat/\s*\{[^}]*proxy_pass\s+http://wxhook_app;", tls)
    assert "/wechat" not in plain
    assert "return 301 https://" in plain
    # TLS server: modern protocols, OAuth proxied, metrics restricted.
    assert re.search(r"ssl_protocols\s+TLSv1\.2\s+TLSv1\.3;", tls)
    assert "location /oauth/" in tls and "location = /me" in tls
    # An accounts file's URLs: /wechat/NAME, /oauth/NAME/..., /me/NAME.
    assert re.search(r"location\s+/wechat/\s*\{[^}]*proxy_pass\s+http://", tls)
    assert re.search(r"location\s+/me/\s*\{[^}]*proxy_pass\s+http://", tls)
    metrics = re.search(r"location\s+[^{]*metrics[^{]*\{([^}]*)\}", tls)
    assert metrics and "deny all;" in metrics.group(1)
    plain_metrics = re.search(r"location\s+[^{]*metrics[^{]*\{([^}]*)\}", plain)
    assert plain_metrics and "deny all;" in plain_metrics.group(1)


def nginx_location(server: str, path: str) -> str:
    """The body of the location nginx picks for `path` in one server block: an exact match,
    else the longest prefix if it is ^~, else the first regex that matches, else the
    longest prefix."""
    exact, prefixes, regexes = None, [], []
    for kind, where, body in re.findall(r"location\s+(=|\^~|~\*?)?\s*(\S+)\s*\{([^}]*)\}",
                                        server):
        if kind == "=" and where == path:
            exact = body
        elif kind in ("", "^~") and path.startswith(where):
            prefixes.append((len(where), kind, body))
        elif kind.startswith("~") and re.search(where, path,
                                                 re.IGNORECASE if kind == "~*" else 0):
            regexes.append(body)
    if exact is not None:
        return exact
    longest = max(prefixes, default=None)
    if longest is not None and longest[1] == "^~":
        return longest[2]
    if regexes:
        return regexes[0]
    assert longest is not None, f"no location for {path}"
    return longest[2]


def test_nginx_never_passes_the_token_authority_on() -> None:
    servers = nginx_servers(NGINX.read_text(encoding="utf-8"))
    tls = next(s for s in servers if re.search(r"listen\s+443\s+ssl", s))
    for server in servers:
        for path in INTERNAL_PATHS:
            chosen = nginx_location(server, path)
            assert "return 404;" in chosen and "proxy_pass" not in chosen, path
    # The emulation picks what nginx would: the public paths are passed on.
    for path in ("/wechat", "/oauth/callback", "/me", "/healthz"):
        assert "proxy_pass" in nginx_location(tls, path), path
    assert "deny all;" in nginx_location(tls, "/metrics")


def test_nginx_access_log_leaves_out_query_strings() -> None:
    # Query strings carry signatures, openids and OAuth codes: every access log of the site
    # uses a format of its own that has the path ($uri) and nothing with the query in it.
    text = re.sub(r"#[^\n]*", "", NGINX.read_text(encoding="utf-8"))
    formats = dict(re.findall(r"log_format\s+(\S+)\s+((?:'[^']*'\s*)+);", text))
    assert formats, "no log_format in the site"
    logs = re.findall(r"access_log\s+([^;]+);", text)
    assert logs
    for spec in logs:
        words = spec.split()
        if words == ["off"]:
            continue
        assert len(words) >= 2 and words[1] in formats, f"access_log {spec}: no safe format"
        fmt = formats[words[1]]
        assert "$uri" in fmt
        for leak in ("$request ", "$request\"", "$request_uri", "$args", "$query_string",
                     "$arg_", "$http_referer", "$is_args"):
            assert leak not in fmt, f"log_format {words[1]} logs {leak.strip()}"


def nginx_config(tmp_path: Path, rewrite: Any = None) -> tuple[str, Path]:
    """nginx and a throwaway main config that includes the site (its certificate a
    self-signed one, its logs under tmp_path, `rewrite` applied to its text); skipped
    without nginx or openssl."""
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light to run `nginx -t`)")
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed; cannot make a throwaway certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    site = NGINX.read_text(encoding="utf-8")
    site = re.sub(r"/etc/letsencrypt/live/[^/]+/fullchain\.pem", str(cert), site)
    site = re.sub(r"/etc/letsencrypt/live/[^/]+/privkey\.pem", str(key), site)
    site = site.replace("/var/log/nginx/", f"{tmp_path}/")
    (tmp_path / "site.conf").write_text(rewrite(site) if rewrite else site, encoding="utf-8")
    temp_paths = "\n".join(
        f"  {kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy")
    )
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log {tmp_path}/access.log;\n{temp_paths}\n"
        f"  include {tmp_path}/site.conf;\n}}\n",
        encoding="utf-8",
    )
    return nginx, main


def test_nginx_t_accepts_the_site(tmp_path: Path) -> None:
    nginx, main = nginx_config(tmp_path)
    proc = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(main)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr


def test_nginx_answers_the_token_authority_404_and_passes_pushes_on(tmp_path: Path) -> None:
    # The site as shipped, run: only its ports (free ones on loopback) and its upstream (a
    # stand-in that records every path it is asked for) differ.
    import http.server
    import threading

    import httpx

    seen: list[str] = []

    class Upstream(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "8")
            self.end_headers()
            self.wfile.write(b"upstream")

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    plain, tls = free_port(), free_port()

    def rewrite(site: str) -> str:
        site = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", site)
        site = site.replace("listen 80;", f"listen 127.0.0.1:{plain};")
        site = site.replace("listen 443 ssl", f"listen 127.0.0.1:{tls} ssl")
        return site.replace("server 127.0.0.1:8000;",
                            f"server 127.0.0.1:{upstream.server_address[1]};")

    nginx, main = nginx_config(tmp_path, rewrite)
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(main), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        host = {"Host": "wx.example.com"}
        with httpx.Client(verify=False, timeout=5) as client:
            for _ in range(100):  # until it listens
                try:
                    client.get(f"https://127.0.0.1:{tls}/healthz", headers=host)
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            for base in (f"http://127.0.0.1:{plain}", f"https://127.0.0.1:{tls}"):
                for path in (*INTERNAL_PATHS, "/internal//accounts/default/token",
                             "/%69nternal/accounts/default/token", "/internal/"):
                    resp = client.get(base + path, headers={**host, "Authorization": "Bearer x"})
                    assert resp.status_code == 404, (base, path, resp.status_code)
                    resp = client.post(base + path, headers=host, json={"access_token": "x"})
                    assert resp.status_code == 404, (base, path, resp.status_code)
            assert client.post(f"https://127.0.0.1:{tls}/wechat", headers=host).text == "upstream"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        upstream.shutdown()
        upstream.server_close()
    assert "/wechat" in seen
    assert not [p for p in seen if "nternal" in p], seen


# ----------------------------------------------------------------------------- README


def test_readme_covers_every_file_and_the_wechat_console() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != "README.md":
            assert path.name in readme, f"deploy/README.md does not mention {path.name}"
    for must in ("40164", "EncodingAESKey", "whitelist", "What was checked here", ".dockerignore"):
        assert must in readme, must
