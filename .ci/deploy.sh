#!/usr/bin/env bash
# The files in deploy/ as a deployer would meet them, checked without a running systemd: the
# unit's exposure by `systemd-analyze security --offline=yes` (at most 2.5). Installs the tool
# when absent, so the end-to-end test that uses it (tests/tests/e2e/deploy.rs) finds it too.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly EXPOSURE_MAX=2.5

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

if ! command -v systemd-analyze >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd
fi
report=$(systemd-analyze security --offline=yes --no-pager deploy/flashsale.service)
# "→ Overall exposure level for flashsale.service: 1.1 OK 🙂"
score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$report")
if [[ -z $score ]] || ! awk -v s="$score" -v m="$EXPOSURE_MAX" 'BEGIN { exit !(s <= m) }'; then
    printf '%s\n' "$report"
    echo "deploy.sh: deploy/flashsale.service exposure ${score:-unknown} is above $EXPOSURE_MAX" >&2
    exit 1
fi
echo "deploy.sh: systemd unit exposure $score (at most $EXPOSURE_MAX)"
