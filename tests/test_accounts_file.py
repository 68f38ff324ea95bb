"""The accounts file (WXHOOK_ACCOUNTS): what it accepts, and one line per problem otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from wxhook.errors import SettingsError
from wxhook.server.accounts import AccountsError, load_accounts
from wxhook.server.app import create_app
from wxhook.server.config import load_settings

AES_A = "A" * 43
SECRET_LITERAL = "literal-secret-value-7f3a"
SECRET_ENV = "env-secret-value-9c1d"
GOOD = f"""\
accounts:
  - name: shop
    app_id: wx1234567890abcdef
    app_secret: ${{SHOP_APP_SECRET}}
    token: ${{SHOP_TOKEN}}
    encoding_aes_key: {AES_A}
    message_mode: safe
    rules: shop.rules.yaml
    handlers: my_shop.handlers:router
  - name: news
    app_id: wxfedcba0987654321
    app_secret: {SECRET_LITERAL}
    token: newsToken
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "accounts.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_issue_example_loads_with_env_and_literal_values(tmp_path: Path) -> None:
    env = {"SHOP_APP_SECRET": SECRET_ENV, "SHOP_TOKEN": "shopToken"}
    accounts = load_accounts(write(tmp_path, GOOD), env)
    assert list(accounts) == ["shop", "news"]
    shop, news = accounts["shop"], accounts["news"]
    assert shop.app_secret.get_secret_value() == SECRET_ENV
    assert shop.token.get_secret_value() == "shopToken"
    assert shop.message_mode == "safe"
    assert shop.rules == str(tmp_path / "shop.rules.yaml")  # next to the accounts file
    assert shop.handlers == "my_shop.handlers:router"
    assert news.app_secret.get_secret_value() == SECRET_LITERAL
    assert news.encoding_aes_key is None and news.message_mode is None and news.rules == ""


ENTRY = "  - name: {name}\n    app_id: {app_id}\n    app_secret: s3cret-A\n    token: tokenA\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("accounts: []\n", "accounts.yaml:1: accounts: must be a list of at least one account"),
    ("- name: a\n", "accounts.yaml:1: must be a mapping with an `accounts:` list"),
    ("accounts:\n  - name: [x\n", "accounts.yaml:3: not valid YAML"),
    ("accounts:\n  - just-a-string\n", "accounts.yaml:2: accounts[0]: must be a mapping"),
    ("accounts:\n" + ENTRY.format(name="Shop", app_id="wxA"),
     "accounts.yaml:2: accounts[0].name: must be 1-32 of a-z 0-9 _ - starting"),
    ("accounts:\n" + ENTRY.format(name="-shop", app_id="wxA"), "accounts[0].name: must be"),
    ("accounts:\n" + ENTRY.format(name="a" * 33, app_id="wxA"), "accounts[0].name: must be"),
    ("accounts:\n" + ENTRY.format(name="x/y", app_id="wxA"), "accounts[0].name: must be"),
    ("accounts:\n" + ENTRY.format(name="shop", app_id="wxA") + ENTRY.format(name="shop",
                                                                            app_id="wxB"),
     "accounts.yaml:6: accounts[1].name: 'shop' is used twice"),
    ("accounts:\n" + ENTRY.format(name="shop", app_id="wxA") + ENTRY.format(name="news",
                                                                            app_id="wxA"),
     "accounts.yaml:6: accounts[1].app_id: the same app_id as account 'shop'"),
    ("accounts:\n  - name: shop\n    app_id: wxA\n    token: tokenA\n",
     "accounts.yaml:2: accounts[0]: app_secret: missing"),
    ("accounts:\n" + ENTRY.format(name="shop", app_id="wxA") + "    colour: red\n",
     "accounts.yaml:6: accounts[0].colour: unknown key"),
    ("accounts:\n" + ENTRY.format(name="shop", app_id="wxA") + "    message_mode: loud\n",
     "accounts.yaml:6: accounts[0].message_mode: must be plain, compat or safe"),
    ("accounts:\n" + ENTRY.format(name="shop", app_id="wxA") + "    message_mode: safe\n",
     "accounts.yaml:6: accounts[0].message_mode: safe needs encoding_aes_key"),
    ("accounts:\n" + ENTRY.format(name="shop", app_id="wxA") + "    handlers: not a spec\n",
     "accounts.yaml:6: accounts[0].handlers: 'not a spec' is not of the form"),
    ("accounts:\n" + ENTRY.format(name="shop", app_id="wxA") + "    name: again\n",
     "accounts[0].name: written twice"),
    ("accounts:\n" + ENTRY.format(name="shop", app_id="wxA") + "    rules: [a]\n",
     "accounts.yaml:6: accounts[0].rules: must be a text"),
    ("accounts:\n" + ENTRY.format(name="shop", app_id="wxA") + "extra: 1\n",
     "accounts.yaml:6: extra: unknown key"),
])
def test_each_problem_is_one_line_with_its_place(tmp_path: Path, text: str,
                                                 expected: str) -> None:
    with pytest.raises(AccountsError) as caught:
        load_accounts(write(tmp_path, text), {})
    assert any(expected in line for line in caught.value.problems), caught.value.problems
    assert all(line.startswith(str(tmp_path / "accounts.yaml")) for line in caught.value.problems)


SECRETS = ["badtoken!!secretpart", "to", "x" * 33, "abc def ghi"]


@pytest.mark.parametrize("token", SECRETS)
@pytest.mark.parametrize("via_env", [False, True])
def test_a_bad_secret_is_described_never_shown(tmp_path: Path, token: str,
                                               via_env: bool) -> None:
    aes = "shortAESkeyValue123"
    text = (f"accounts:\n  - name: shop\n    app_id: wxA\n    app_secret: whatever\n"
            f"    token: {'${T}' if via_env else repr(token)}\n"
            f"    encoding_aes_key: {'${K}' if via_env else aes}\n")
    with pytest.raises(AccountsError) as caught:
        load_accounts(write(tmp_path, text), {"T": token, "K": aes})
    message = str(caught.value)
    assert "accounts[0].token:" in message and "accounts[0].encoding_aes_key:" in message
    for secret in (token, aes, "secretpart", "whatever"):
        if len(secret) > 3:
            assert secret not in message


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = ("accounts:\n" + ENTRY.format(name="Bad!", app_id="wxA")
            + "  - name: ok\n    app_id: wxB\n    app_secret: ${NOPE}\n    token: t\n")
    with pytest.raises(AccountsError) as caught:
        load_accounts(write(tmp_path, text), {})
    assert [p.split(": ", 1)[1].split(":")[0] for p in caught.value.problems] == [
        "accounts[0].name", "accounts[1].app_secret", "accounts[1].token"]
    assert "${NOPE} is not set in the environment" in str(caught.value)


def test_an_empty_env_variable_is_not_set(tmp_path: Path) -> None:
    text = "accounts:\n  - name: a\n    app_id: wxA\n    app_secret: ${S}\n    token: tokenA\n"
    with pytest.raises(AccountsError, match=r"\$\{S\} is not set"):
        load_accounts(write(tmp_path, text), {"S": ""})


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(AccountsError, match="cannot read"):
        load_accounts(str(tmp_path / "nope.yaml"), {})


def test_settings_need_no_wechat_account_with_an_accounts_file(tmp_path: Path) -> None:
    settings = load_settings(_env_file=None, WXHOOK_ACCOUNTS="accounts.yaml")
    assert settings.accounts == "accounts.yaml"
    with pytest.raises(SettingsError, match="missing WECHAT_APP_ID"):
        load_settings(_env_file=None)


def test_start_up_refuses_a_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, "accounts:\n" + ENTRY.format(name="Bad!", app_id="wxA"))
    with pytest.raises(SettingsError, match=r"accounts\[0\]\.name"):
        create_app(load_settings(_env_file=None, WXHOOK_ACCOUNTS=path))


def test_start_up_refuses_an_account_whose_rules_file_is_bad(tmp_path: Path) -> None:
    (tmp_path / "shop.rules.yaml").write_text("keywords: 3\n", encoding="utf-8")
    path = write(tmp_path, "accounts:\n" + ENTRY.format(name="shop", app_id="wxA")
                 + "    rules: shop.rules.yaml\n")
    with pytest.raises(SettingsError, match=r"account shop: rules .*shop\.rules\.yaml"):
        create_app(load_settings(_env_file=None, WXHOOK_ACCOUNTS=path))


def test_start_up_refuses_an_account_whose_handlers_cannot_be_imported(tmp_path: Path) -> None:
    path = write(tmp_path, "accounts:\n" + ENTRY.format(name="shop", app_id="wxA")
                 + "    handlers: no_such_module_here:router\n")
    with pytest.raises(SettingsError, match="no_such_module_here"):
        create_app(load_settings(_env_file=None, WXHOOK_ACCOUNTS=path))
