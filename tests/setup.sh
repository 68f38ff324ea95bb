#!/usr/bin/env bash
# Test prerequisites that come from Debian's packages (not PyPI): installed once, if missing.
# The OAuth page test drives a real headless Chromium (a CJK font so names like 刺猬宝宝 render
# in its screenshot); without Chromium that test skips with a reason.
set -u
need=""
command -v chromium >/dev/null 2>&1 || need="chromium"
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need="$need fonts-wqy-microhei"
if [ -n "$need" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "tests/setup.sh: installing Debian's $need for the browser test (once)"
  # shellcheck disable=SC2086
  (apt-get install -y -q $need >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $need >/dev/null 2>&1; }) \
    || echo "tests/setup.sh: could not install $need; the browser test may skip"
fi
exit 0
