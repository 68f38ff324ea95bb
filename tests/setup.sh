#!/usr/bin/env bash
# Test prerequisites that come from Debian's packages (not PyPI): installed once, if missing.
# - chromium (+ a CJK font so names like 刺猬宝宝 render): the OAuth page in a real browser;
# - nginx-light and prometheus: the deploy files checked with `nginx -t` and `promtool`.
# Each is installed on its own; a test whose tool is still missing skips, saying why.
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ ${#need[@]} -gt 0 ] || exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
  echo "tests/setup.sh: missing ${need[*]} (not root with apt-get): those tests will skip"
  exit 0
fi
updated=""
for pkg in "${need[@]}"; do
  echo "tests/setup.sh: installing Debian's $pkg (once)"
  if ! apt-get install -y -q "$pkg" >/dev/null 2>&1; then
    [ -n "$updated" ] || { apt-get update -q >/dev/null 2>&1; updated=1; }
    apt-get install -y -q "$pkg" >/dev/null 2>&1 \
      || echo "tests/setup.sh: could not install $pkg; the tests that need it will skip"
  fi
done
exit 0
