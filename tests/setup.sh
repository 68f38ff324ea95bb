#!/usr/bin/env bash
# Test prerequisites from Debian's packages (not PyPI), installed once when missing, only as
# root with apt-get. Without them the tests that need them skip, each saying why:
# - redis-server: the Redis tests (the suite starts its own servers on free ports);
# - chromium and fonts-wqy-microhei: the OAuth page in a real headless browser (the CJK
#   font so a name like 刺猬宝宝 renders);
# - nginx-light: `nginx -t` on deploy/nginx/wxhook.conf;
# - prometheus: for `promtool` on deploy/prometheus/alerts.yml.
# No service is started, now or at boot: installs run under a policy-rc.d that refuses
# every start (Debian's postinst scripts honour it), without recommended packages (no
# node-exporter), and the units of the packages installed here are disabled afterwards.
set -u
policy=${WXHOOK_POLICY_RC_D:-/usr/sbin/policy-rc.d}

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ ${#need[@]} -gt 0 ] || exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
  echo "tests/setup.sh: missing ${need[*]} (not root with apt-get): the tests that need them will skip"
  exit 0
fi

if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# tests/setup.sh: no service starts while test tools install\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
updated=""
for pkg in "${need[@]}"; do
  echo "tests/setup.sh: installing Debian's $pkg (once; no service is started)"
  if ! apt-get install -y -q --no-install-recommends "$pkg" >/dev/null 2>&1; then
    [ -n "$updated" ] || { apt-get update -q >/dev/null 2>&1; updated=1; }
    apt-get install -y -q --no-install-recommends "$pkg" >/dev/null 2>&1 \
      || { echo "tests/setup.sh: could not install $pkg; the tests that need it will skip"; continue; }
  fi
  case $pkg in
    nginx-light) unit=nginx.service ;;
    prometheus) unit=prometheus.service ;;
    redis-server) unit=redis-server.service ;;
    *) unit="" ;;
  esac
  if [ -n "$unit" ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --quiet "$unit" >/dev/null 2>&1 || true
  fi
done
exit 0
