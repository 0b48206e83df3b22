#!/usr/bin/env bash
# Memory under a long mixed load: one release server on MariaDB (default hold TTL, so holds expire
# and the sweeper works), three flashsale-load runs at once for SOAK_SECONDS (default 600): hot
# holds on one product, the full hold -> order -> webhook flow over 100 products, and a GET storm
# on the hot product. Prints the server's RSS every 30 s and at the end, and the load figures.
#
#   bash benches/soak.sh                 # 10 minutes
#   SOAK_SECONDS=60 bash benches/soak.sh # a short check
#
# Uses the binaries in target/release (cargo build --release -p flashsale-server -p
# flashsale-benches). Every loop is bounded by SOAK_SECONDS; the server is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${SOAK_SECONDS:-600}
port=${SOAK_PORT:-18200}
mysql_url=${SOAK_MYSQL_URL:-mysql://root@127.0.0.1:3306}
database=flashsale_soak
target="http://127.0.0.1:$port"
server=target/release/flashsale
load=target/release/flashsale-load
work=$(mktemp -d target/soak.XXXXXX)
[[ -x $server && -x $load ]] || {
    echo "soak.sh: build first: cargo build --release -p flashsale-server -p flashsale-benches" >&2
    exit 1
}

mariadb -h127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS $database; CREATE DATABASE $database"
"$server" serve --bind "127.0.0.1:$port" --database-url "$mysql_url/$database" \
    --admin-token bench-admin-token-0001 --webhook-secret bench-webhook-secret-0001 >"$work/server.log" 2>&1 &
server_pid=$!
cleanup() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    mariadb -h127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS $database" || true
}
trap cleanup EXIT
for _ in $(seq 1 300); do
    curl -sf "$target/readyz" >/dev/null && break
    sleep 0.2
done
curl -sf "$target/readyz" >/dev/null || { echo "soak.sh: the server did not start" >&2; exit 1; }

rss() { ps -o rss= -p "$server_pid" | tr -d ' '; }
hot=$("$load" setup --target "$target" --admin-token bench-admin-token-0001 --stock 2000000000 --name Hot)
flow=$("$load" setup --target "$target" --admin-token bench-admin-token-0001 --stock 1000000 --products 100 --name Flow)
first=$(head -1 <<<"$flow")
last=$(tail -1 <<<"$flow")
echo "start: RSS $(rss) KiB"
run() {
    "$load" run --target "$target" --duration "$seconds" --warmup 0 --timeout 30 "$@"
}
run --scenario hot-holds --product "$hot" --connections 64 >"$work/hot.txt" &
hot_pid=$!
run --scenario flow --products "$first..$last" --webhook-secret bench-webhook-secret-0001 --connections 32 \
    >"$work/flow.txt" &
flow_pid=$!
run --scenario get-product --product "$hot" --connections 64 >"$work/get.txt" &
get_pid=$!
for ((t = 30; t <= seconds; t += 30)); do
    sleep 30
    echo "t=${t}s: RSS $(rss) KiB"
done
wait "$hot_pid" "$flow_pid" "$get_pid"
echo "end: RSS $(rss) KiB"
for part in hot flow get; do
    echo "--- $part"
    cat "$work/$part.txt"
done
