#!/usr/bin/env bash
# Load on several instances: three `flashsale serve`, each on its own node of a three-node MariaDB
# Galera cluster started here on private ports, and, for comparison in the same run, three
# instances on the one MariaDB primary at 127.0.0.1:3306. Each figure runs one flashsale-load
# per instance at the same time and sums them. Prints a markdown table (the figures in
# docs/OPERATIONS.md) and leaves nothing running.
#
#   bash benches/cluster.sh            # 10 s per figure
#   CLUSTER_DURATION=3 bash benches/cluster.sh
#
# Needs a release build of both binaries (it builds them), mariadbd, galera-4 and rsync
# (`bash .ci/mariadb.sh` installs them), and a quiet machine: everything shares its cores.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly duration=${CLUSTER_DURATION:-10}
readonly connections=${CLUSTER_CONNECTIONS:-64}
readonly provider=/usr/lib/galera/libgalera_smm.so
readonly admin=bench-admin-token-0001 secret=bench-webhook-secret-0001
readonly server=target/release/flashsale load=target/release/flashsale-load

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ -f $provider ]] || die "$provider is missing: run bash .ci/mariadb.sh"
cargo build --release -q -p flashsale-server --bin flashsale
cargo build --release -q -p flashsale-benches --bin flashsale-load

work=$(mktemp -d /tmp/flashsale-cluster.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

user_args=()
if [[ $(id -u) -eq 0 ]]; then user_args=(--user=mysql); fi

# node N [ARGS...]: starts Galera node N (1..3) in the background.
node() {
    local n=$1
    shift
    local base=$((4700 + 10 * n))
    /usr/sbin/mariadbd --no-defaults "${user_args[@]}" --datadir="$work/n$n" --port=$((3340 + n)) \
        --bind-address=127.0.0.1 --socket="$work/n$n.sock" --pid-file="$work/n$n.pid" \
        --log-error="$work/n$n.err" --innodb-buffer-pool-size=128M --skip-name-resolve \
        --binlog-format=ROW --innodb-autoinc-lock-mode=2 --max-connections=500 \
        --wsrep-on=ON --wsrep-provider="$provider" --wsrep-cluster-name=flashsale-bench \
        --wsrep-cluster-address=gcomm://127.0.0.1:4710,127.0.0.1:4720,127.0.0.1:4730 \
        --wsrep-node-address=127.0.0.1:$base --wsrep-sst-receive-address=127.0.0.1:$((base + 5)) \
        --wsrep-provider-options="base_port=$base;ist.recv_addr=127.0.0.1:$((base + 1))" \
        --wsrep-sst-method=rsync "$@" 2>/dev/null &
    pids+=($!)
}

sql() { mariadb --protocol=TCP -h127.0.0.1 -P"$1" -uroot -N -e "$2" 2>/dev/null; }

wait_synced() {
    local port=$1
    for _ in $(seq 300); do
        [[ $(sql "$port" "SHOW STATUS LIKE 'wsrep_cluster_size'" | cut -f2) == 3 &&
            $(sql "$port" "SHOW STATUS LIKE 'wsrep_ready'" | cut -f2) == ON ]] && return
        sleep 0.2
    done
    die "node on $port did not sync (see $work/*.err)"
}

log "starting a three-node Galera cluster in $work"
mkdir -p "$work/n1"
[[ ${#user_args[@]} -eq 0 ]] || chown -R mysql:mysql "$work"
mariadb-install-db "${user_args[@]}" --datadir="$work/n1" --auth-root-authentication-method=normal \
    --skip-test-db >/dev/null
printf "CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY '';\nGRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;\n" \
    >"$work/init.sql"
node 1 --wsrep-new-cluster --init-file="$work/init.sql"
for _ in $(seq 100); do sql 3341 "SELECT 1" >/dev/null && break; sleep 0.2; done
mariadb-admin --socket="$work/n1.sock" -uroot shutdown
wait "${pids[0]}" 2>/dev/null || true
pids=()
cp -a "$work/n1" "$work/n2"
cp -a "$work/n1" "$work/n3"
node 1 --wsrep-new-cluster
for _ in $(seq 100); do sql 3341 "SELECT 1" >/dev/null && break; sleep 0.2; done
node 2
node 3
for port in 3341 3342 3343; do wait_synced "$port"; done
sql 3341 "CREATE DATABASE flashsale"
mariadb --protocol=TCP -h127.0.0.1 -P3306 -uroot -e \
    "DROP DATABASE IF EXISTS flashsale_cluster_bench; CREATE DATABASE flashsale_cluster_bench"

# instances URL... : starts one instance per database URL on ports 8201.., first alone (it
# migrates), then the rest; waits until all are ready.
instances=()
start_instances() {
    instances=()
    local i=0
    for url in "$@"; do
        local port=$((8201 + i))
        "$server" serve --bind "127.0.0.1:$port" --database-url "$url" --admin-token "$admin" \
            --webhook-secret "$secret" --hold-ttl 1h >"$work/instance$i.log" 2>&1 &
        pids+=($!)
        instances+=("$!")
        for _ in $(seq 300); do
            [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz") == 200 ]] && break
            sleep 0.2
        done
        i=$((i + 1))
    done
}

stop_instances() {
    for pid in "${instances[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${instances[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# parallel NAME SCENARIO-ARGS-PER-INSTANCE...: one flashsale-load per instance at once; prints
# a table row with the summed rate and the worst p99.
parallel() {
    local name=$1
    shift
    local i=0 out=()
    for args in "$@"; do
        # shellcheck disable=SC2086
        "$load" run --target "http://127.0.0.1:$((8201 + i))" --connections "$connections" \
            --duration "$duration" --json $args >"$work/run$i.json" &
        out+=($!)
        i=$((i + 1))
    done
    for pid in "${out[@]}"; do wait "$pid"; done
    python3 - "$name" "$work" "$i" <<'PY'
import json, sys
name, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = [json.load(open(f"{work}/run{i}.json")) for i in range(n)]
rate = sum(r["rps"] for r in runs)
p99 = max(r["p99_ms"] for r in runs)
status = {}
for r in runs:
    for k, v in r["status"].items():
        status[k] = status.get(k, 0) + v
errors = sum(r["errors"] for r in runs)
print(f"| {name} | {n} | {rate:,.0f} | {p99:.1f} | {status} | {errors} |")
PY
}

setup_products() {
    "$load" setup --target http://127.0.0.1:8201 --admin-token "$admin" --products "$1" \
        --stock 2000000000 --name "$2"
}

echo "| figure | instances | req/s (sum) | worst p99 ms | statuses | errors |"
echo "|---|---|---|---|---|---|"
for db in galera primary; do
    if [[ $db == galera ]]; then
        start_instances mysql://root@127.0.0.1:334{1,2,3}/flashsale
    else
        start_instances mysql://root@127.0.0.1:3306/flashsale_cluster_bench{,,}
    fi
    hot=$(setup_products 1 "hot-$db")
    mapfile -t spread < <(setup_products 3 "spread-$db")
    parallel "$db: GET /healthz" "--scenario healthz" "--scenario healthz" "--scenario healthz"
    parallel "$db: hot holds, one product, one instance" "--scenario hot-holds --product $hot"
    parallel "$db: hot holds, one product, every instance" "--scenario hot-holds --product $hot" \
        "--scenario hot-holds --product $hot" "--scenario hot-holds --product $hot"
    parallel "$db: hot holds, a product per instance" "--scenario hot-holds --product ${spread[0]}" \
        "--scenario hot-holds --product ${spread[1]}" "--scenario hot-holds --product ${spread[2]}"
    stop_instances
done
mariadb --protocol=TCP -h127.0.0.1 -P3306 -uroot -e "DROP DATABASE IF EXISTS flashsale_cluster_bench"
