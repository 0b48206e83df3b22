#!/usr/bin/env bash
# Schemathesis (from the Python registry) against a live server on a fresh SQLite database:
# requests generated from server/openapi.json, valid and invalid, for every operation. Fails on
# any 5xx and on any answer that does not match the document (status, content type, headers,
# body schema). `positive_data_acceptance` is left out: a schema-valid request may still be
# refused for what it names (an unknown product or hold, a stock that would overflow), which
# the document says with its 4xx answers. Webhook bodies are signed by the hook in
# .ci/schemathesis_hooks.py, as the payment provider signs them.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/schemathesis-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==4.32.5"
fi

cargo build --quiet -p flashsale-server --bin flashsale
dir=$(mktemp -d)
target/debug/flashsale serve --bind 127.0.0.1:0 --database-url "sqlite:$dir/flashsale.db" \
    --admin-token schemathesis-admin --webhook-secret schemathesis-secret \
    >"$dir/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$dir"' EXIT

address=""
for _ in $(seq 1 300); do
    address=$(sed -n 's/.*listening local=\([0-9.:]*\).*/\1/p' "$dir/server.log" | head -n 1)
    [ -n "$address" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$dir/server.log"; exit 1; }
    sleep 0.1
done
[ -n "$address" ] || { echo "the server did not start"; cat "$dir/server.log"; exit 1; }

SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH=.ci FLASHSALE_WEBHOOK_SECRET=schemathesis-secret \
"$venv/bin/schemathesis" run "http://$address/api/openapi.json" \
    --header "Authorization: Bearer schemathesis-admin" \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-25}" \
    --checks all --exclude-checks positive_data_acceptance \
    --no-color

# The server lived through it, and logged no error.
kill -0 "$server"
if grep -E " ERROR " "$dir/server.log"; then
    echo "the server logged errors under schemathesis"
    exit 1
fi
