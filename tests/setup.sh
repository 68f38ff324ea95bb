#!/usr/bin/env bash
# Test prerequisites that come from Debian's packages (not PyPI): installed once, if missing.
# The OAuth page test drives a real headless Chromium; without it that test skips with a reason.
set -u
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "tests/setup.sh: installing Debian's chromium for the browser test (once)"
  (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) \
    || echo "tests/setup.sh: could not install chromium; the browser test will skip"
fi
exit 0
