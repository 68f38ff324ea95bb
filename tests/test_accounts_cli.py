"""An accounts file in real processes: `wxhook serve` refuses a bad one, answers each
account at its URL; `simulate --account` and `check --account` speak for one account."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import (
    AES_KEY,
    SANDBOX_APP_ID,
    SANDBOX_SECRET,
    TOKEN,
    WXHOOK,
    free_port,
    sandbox_process,
    server_process,
)

pytestmark = pytest.mark.slow

SHOP_SECRET = "shop-secret-value-not-in-output"


def accounts_file(tmp_path: Path) -> Path:
    """news: the sandbox's own account, safe mode; shop: an appid the sandbox does not know."""
    path = tmp_path / "accounts.yaml"
    path.write_text(f"""\
accounts:
  - name: news
    app_id: {SANDBOX_APP_ID}
    app_secret: ${{NEWS_SECRET}}
    token: {TOKEN}
    encoding_aes_key: {AES_KEY}
    message_mode: safe
  - name: shop
    app_id: wxshop00000000001
    app_secret: {SHOP_SECRET}
    token: shopToken1
""", encoding="utf-8")
    return path


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("WECHAT_", "WXHOOK_")) and k != "REDIS_URL"}
    return subprocess.run([WXHOOK, *args], env={**base, **env}, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_serve_refuses_a_bad_accounts_file_with_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text("accounts:\n  - name: Bad!\n    app_id: wxA\n    app_secret: hush-hush-1\n"
                    "    token: t\n", encoding="utf-8")
    res = run(["serve", "--port", str(free_port())], {"WXHOOK_ACCOUNTS": str(path)}, tmp_path)
    assert res.returncode == 2
    assert f"{path}:2: accounts[0].name: must be" in res.stderr
    assert f"{path}:5: accounts[0].token: must be 3-32" in res.stderr
    assert "hush-hush-1" not in res.stderr + res.stdout


def test_a_served_account_answers_simulate_at_its_url(tmp_path: Path) -> None:
    path = accounts_file(tmp_path)
    env = {"WXHOOK_ACCOUNTS": str(path), "NEWS_SECRET": SANDBOX_SECRET}
    with sandbox_process() as api, server_process(api, cwd=tmp_path, **env) as url:
        res = run(["simulate", "subscribe", "--account", "news", "--aes",
                   "--url", f"{url}/wechat/news"], {**env, "WECHAT_API_BASE": api}, tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "(encrypted reply)" in res.stdout and "Content: Welcome, 刺猬宝宝!" in res.stdout
        # Signed as shop at news's URL: refused.
        res = run(["simulate", "text", "--account", "shop", "--url", f"{url}/wechat/news"],
                  env, tmp_path)
        assert res.returncode == 1 and "HTTP 403" in res.stdout
        assert httpx.post(f"{url}/wechat/nobody", timeout=5).status_code == 404
        assert httpx.post(f"{url}/wechat", timeout=5).status_code == 404
    res = run(["simulate", "text", "--account", "nope"], env, tmp_path)
    assert res.returncode == 2 and "no account named 'nope'" in res.stderr


def test_check_speaks_for_one_account(tmp_path: Path) -> None:
    path = accounts_file(tmp_path)
    with sandbox_process() as api:
        env = {"WXHOOK_ACCOUNTS": str(path), "NEWS_SECRET": SANDBOX_SECRET,
               "WECHAT_API_BASE": api}
        good = run(["check", "--account", "news"], env, tmp_path)
        bad = run(["check", "--account", "shop"], env, tmp_path)
        every = run(["check"], env, tmp_path)
        unknown = run(["check", "--account", "nope"], env, tmp_path)
    assert good.returncode == 0, good.stdout
    assert "account news" in good.stdout and "[ok] access token" in good.stdout
    assert bad.returncode == 1 and "[FAIL] access token: errcode 40013" in bad.stdout
    assert "appid wxshop00000000001" in bad.stdout
    # Without --account: every account, one line each; shop's failure fails the check.
    assert every.returncode == 1 and "[ok] accounts: 2 in" in every.stdout
    assert ("  [ok] news: appid wx00000000sandbox, safe mode, access token obtained\n"
            in every.stdout)
    assert ("  [FAIL] shop: appid wxshop00000000001, plain mode: access token: errcode 40013"
            in every.stdout)
    assert "wxhook sandbox` with the same WXHOOK_ACCOUNTS" in every.stdout
    assert [line.split("]")[1].split(":")[0].strip() for line in every.stdout.splitlines()
            if line.startswith(("  [ok] ", "  [FAIL] "))] == ["accounts", "news", "shop"]
    assert every.stdout.rstrip().endswith("result: FAILED")
    assert unknown.returncode == 2 and "no account named 'nope'" in unknown.stdout
    for res in (good, bad, every, unknown):
        out = res.stdout + res.stderr
        assert SHOP_SECRET not in out and SANDBOX_SECRET not in out


def test_the_sandbox_stands_in_for_every_account_of_the_file(tmp_path: Path) -> None:
    path = accounts_file(tmp_path)
    env = {"WXHOOK_ACCOUNTS": str(path), "NEWS_SECRET": SANDBOX_SECRET}
    with sandbox_process(env=env) as api:
        checks = [run(["check", "--account", name], {**env, "WECHAT_API_BASE": api}, tmp_path)
                  for name in ("news", "shop")]
        every = run(["check"], {**env, "WECHAT_API_BASE": api}, tmp_path)
    for res in checks:
        assert res.returncode == 0, res.stdout
        assert "[ok] access token" in res.stdout and SHOP_SECRET not in res.stdout
    assert every.returncode == 0, every.stdout
    assert "[ok] news:" in every.stdout and "[ok] shop:" in every.stdout
    assert every.stdout.rstrip().endswith("result: ready to serve")


def test_check_names_the_account_whose_rules_or_handlers_cannot_load(tmp_path: Path) -> None:
    path = accounts_file(tmp_path)
    (tmp_path / "shop.rules.yaml").write_text("keywords: [{name: p, regex: ['('], "
                                              "replies: [x]}]\n", encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "    rules: shop.rules.yaml\n    handlers: no_such_pkg.mod:router\n",
                    encoding="utf-8")
    env = {"WXHOOK_ACCOUNTS": str(path), "NEWS_SECRET": SANDBOX_SECRET}
    with sandbox_process(env=env) as api:
        res = run(["check"], {**env, "WECHAT_API_BASE": api}, tmp_path)
    assert res.returncode == 1, res.stdout
    shop = next(line for line in res.stdout.splitlines() if line.startswith("  [FAIL] shop:"))
    assert "rules: " in shop and "shop.rules.yaml" in shop and "handlers: " in shop
    assert "[ok] news:" in res.stdout
    assert SHOP_SECRET not in res.stdout + res.stderr


def test_menu_and_rules_import_act_for_the_named_account(tmp_path: Path) -> None:
    path = accounts_file(tmp_path)
    (tmp_path / "shop.rules.yaml").write_text(
        "menu:\n  button:\n    - {type: click, name: Shop, key: SHOP}\n"
        "clicks:\n  SHOP: The shop.\n", encoding="utf-8")
    path.write_text(path.read_text(encoding="utf-8") + "    rules: shop.rules.yaml\n",
                    encoding="utf-8")
    env = {"WXHOOK_ACCOUNTS": str(path), "NEWS_SECRET": SANDBOX_SECRET}
    with sandbox_process(env=env) as api:
        env["WECHAT_API_BASE"] = api
        pushed = run(["menu", "push", "--account", "shop"], env, tmp_path)  # shop's rules
        shop = run(["menu", "show", "--account", "shop"], env, tmp_path)
        news = run(["menu", "show", "--account", "news"], env, tmp_path)
        imported = run(["rules", "import", "--account", "shop"], env, tmp_path)
        deleted = run(["menu", "delete", "--account", "news"], env, tmp_path)
        still = run(["menu", "show", "--account", "shop"], env, tmp_path)
        unknown = run(["menu", "show", "--account", "nope"], env, tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    assert "to account shop (appid wxshop00000000001)" in pushed.stdout
    assert shop.returncode == 0 and '"name": "Shop"' in shop.stdout
    assert news.returncode == 1 and "46003" in news.stderr  # news has no menu of its own
    assert imported.returncode == 0, imported.stderr
    assert "name: Shop" in imported.stdout and "SHOP" in imported.stdout
    assert deleted.returncode == 0 and '"name": "Shop"' in still.stdout  # news's, not shop's
    assert unknown.returncode == 2 and "no account named 'nope'" in unknown.stderr
    for res in (pushed, shop, news, imported, deleted, still, unknown):
        assert SHOP_SECRET not in res.stdout + res.stderr
