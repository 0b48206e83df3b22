#!/usr/bin/env bash
# Load on a Galera cluster of 1, 2 and 3 nodes on this machine, one flashsale instance on each
# node, every instance taking writes: hot holds (every connection on one product), holds spread
# at random over 1,000 products, and the whole flow (hold -> order -> signed webhook) over the
# same 1,000, each with one flashsale-load per instance and the connections split between them.
# Prints a markdown table (and writes it to target/galera-load.md) with each figure's ratio to
# one node and the certification conflicts the run cost (wsrep_local_cert_failures and
# wsrep_local_bf_aborts summed over the nodes, and the instances' retries).
#
# Everything shares this machine's cores, so read the figures as ratios to one node in the same
# run, never as what a cluster of real machines does.
#
# Needs mariadbd, mariadb-install-db and the Galera provider (`bash .ci/mariadb.sh` installs
# them), and release builds (`cargo build --release -p flashsale-server -p flashsale-benches`,
# done here unless GALERA_NO_BUILD=1).
#
# Environment:
#   GALERA_NODES="1 2 3"        cluster sizes, each started fresh
#   GALERA_CONNECTIONS=256      connections in all, split between the instances
#   GALERA_DURATION=10          measured seconds per run (after 1 s of warm-up)
set -euo pipefail
cd "$(dirname "$0")/.."

sizes=${GALERA_NODES:-1 2 3}
connections=${GALERA_CONNECTIONS:-256}
duration=${GALERA_DURATION:-10}
provider=/usr/lib/galera/libgalera_smm.so
server=target/release/flashsale
load=target/release/flashsale-load
admin_token=galera-bench-admin-token
webhook_secret=galera-bench-webhook-secret

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'galera.sh: %s\n' "$*" >&2
    exit 1
}

for tool in mariadbd mariadb-install-db mariadb; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || die "$tool is missing (bash .ci/mariadb.sh)"
done
[[ -e $provider ]] || die "$provider is missing: apt-get install galera-4 rsync"
if [[ ${GALERA_NO_BUILD:-0} != 1 ]]; then
    cargo build --release -p flashsale-server -p flashsale-benches
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-galera.XXXXXX")
# The nodes run as mysql when this runs as root: they must reach their directories.
chmod 755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ ${GALERA_KEEP:-0} == 1 ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
user_args=()
if [[ $(id -u) == 0 ]]; then user_args=(--user=mysql); fi

# start_cluster N: a fresh cluster of N nodes under $work/cluster-N; sets node_ports.
start_cluster() {
    local n=$1 dir=$work/cluster-$1 i
    local gcomm=() address
    for ((i = 0; i < n; i++)); do gcomm+=("$(free_port)"); done
    address=$(printf '127.0.0.1:%s,' "${gcomm[@]}")
    address=${address%,}
    node_ports=()
    for ((i = 0; i < n; i++)); do
        node_ports+=("$(free_port)")
        mkdir -p "$dir/node$i/tmp"
    done
    if [[ $(id -u) == 0 ]]; then chown -R mysql:mysql "$dir"; fi
    mariadb-install-db --no-defaults "${user_args[@]}" --datadir="$dir/node0/data" \
        --tmpdir="$dir/node0/tmp" --auth-root-authentication-method=normal --skip-test-db \
        >"$dir/install.log" 2>&1 || die "mariadb-install-db failed: $(tail -5 "$dir/install.log")"
    printf "CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY '';\nGRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;\n" >"$dir/init.sql"
    for ((i = 1; i < n; i++)); do cp -a "$dir/node0/data" "$dir/node$i/data"; done
    if [[ $(id -u) == 0 ]]; then chown -R mysql:mysql "$dir"; fi
    for ((i = 0; i < n; i++)); do
        local args=(--no-defaults "${user_args[@]}" --datadir="$dir/node$i/data"
            --socket="$dir/node$i/mariadbd.sock" --tmpdir="$dir/node$i/tmp"
            --pid-file="$dir/node$i/mariadbd.pid" --log-error="$dir/node$i/error.log"
            --port="${node_ports[$i]}" --bind-address=127.0.0.1 --max-connections=500
            --skip-name-resolve --wsrep-on=ON --wsrep-provider="$provider"
            --wsrep-cluster-name=flashsale-bench --wsrep-node-name="node$i"
            --wsrep-cluster-address="gcomm://$address"
            --wsrep-node-address="127.0.0.1:${gcomm[$i]}"
            --wsrep-sst-receive-address="127.0.0.1:$(free_port)" --wsrep-sst-method=rsync
            --wsrep-provider-options="base_port=${gcomm[$i]};ist.recv_addr=127.0.0.1:$(free_port);gcache.size=128M"
            --binlog-format=ROW --innodb-autoinc-lock-mode=2)
        if ((i == 0)); then args+=(--wsrep-new-cluster --init-file="$dir/init.sql"); fi
        /usr/sbin/mariadbd "${args[@]}" </dev/null >/dev/null 2>&1 &
        pids+=($!)
        if ((i == 0)); then wait_synced 0 "$dir"; fi
    done
    for ((i = 0; i < n; i++)); do wait_synced "$i" "$dir"; done
}

# wait_synced I DIR: until node I answers and says it is synced in the cluster.
wait_synced() {
    local i=$1 dir=$2 state=""
    for ((t = 0; t < 600; t++)); do
        state=$(mariadb --protocol=tcp -h 127.0.0.1 -P "${node_ports[$i]}" -uroot -N -e \
            "SHOW STATUS LIKE 'wsrep_local_state_comment'" 2>/dev/null | cut -f2 || true)
        [[ $state == Synced ]] && return 0
        sleep 0.2
    done
    die "node $i did not sync: $(tail -20 "$dir/node$i/error.log")"
}

# status_sum NAME: a wsrep status counter summed over the nodes.
status_sum() {
    local sum=0 port value
    for port in "${node_ports[@]}"; do
        value=$(mariadb --protocol=tcp -h 127.0.0.1 -P "$port" -uroot -N -e \
            "SHOW GLOBAL STATUS LIKE '$1'" | cut -f2)
        sum=$((sum + value))
    done
    echo "$sum"
}

# retries: the instances' retried scripts, summed.
retries() {
    local sum=0 port value
    for port in "${server_ports[@]}"; do
        value=$(curl -fsS "http://127.0.0.1:$port/metrics" |
            awk '/^flashsale_retries_total\{/ { s += $2 } END { print s + 0 }')
        sum=$((sum + value))
    done
    echo "$sum"
}

results="$work/results.tsv"
: >"$results"
for n in $sizes; do
    log "a cluster of $n node(s)"
    start_cluster "$n"
    mariadb --protocol=tcp -h 127.0.0.1 -P "${node_ports[0]}" -uroot -e "CREATE DATABASE flashsale"
    server_ports=()
    for ((i = 0; i < n; i++)); do
        server_ports+=("$(free_port)")
        "$server" serve --bind "127.0.0.1:${server_ports[$i]}" \
            --database-url "mysql://root@127.0.0.1:${node_ports[$i]}/flashsale" \
            --admin-token "$admin_token" --webhook-secret "$webhook_secret" --hold-ttl 1h \
            >"$work/server-$n-$i.log" 2>&1 &
        pids+=($!)
        for ((t = 0; t < 300; t++)); do
            [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${server_ports[$i]}/readyz") == 200 ]] && break
            sleep 0.2
        done
    done
    first_target="http://127.0.0.1:${server_ports[0]}"
    hot=$("$load" setup --target "$first_target" --admin-token "$admin_token" --stock 2000000000 --name Hot)
    ids=$("$load" setup --target "$first_target" --admin-token "$admin_token" --products 1000 \
        --stock 1000000 --name Spread)
    # Galera numbers each node's inserts one in N: the ids are a list, not a range.
    spread=$(paste -sd, <<<"$ids")
    per=$((connections / n))
    for scenario in hot-holds spread-holds flow; do
        case $scenario in
        hot-holds) args=(--scenario hot-holds --product "$hot") ;;
        spread-holds) args=(--scenario spread-holds --products "$spread") ;;
        flow) args=(--scenario flow --products "$spread" --webhook-secret "$webhook_secret") ;;
        esac
        cert_before=$(status_sum wsrep_local_cert_failures)
        bf_before=$(status_sum wsrep_local_bf_aborts)
        retries_before=$(retries)
        runs=()
        for ((i = 0; i < n; i++)); do
            "$load" run --target "http://127.0.0.1:${server_ports[$i]}" --connections "$per" \
                --duration "$duration" --warmup 1 "${args[@]}" --json >"$work/run-$i.json" &
            runs+=($!)
        done
        for run in "${runs[@]}"; do wait "$run"; done
        sums=$(python3 - "$work" "$n" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
rps = flows = errors = 0.0
p99 = 0.0
codes = {}
for i in range(n):
    d = json.load(open(f"{work}/run-{i}.json"))
    rps += d["rps"]
    flows += d.get("flows_per_s") or 0
    errors += d.get("errors", 0)
    p99 = max(p99, d["p99_ms"])
    for k, v in d.get("status", {}).items():
        codes[k] = codes.get(k, 0) + v
print(f"{rps:.0f}\t{flows:.0f}\t{p99:.1f}\t{int(errors)}\t{json.dumps(codes, sort_keys=True)}")
PY
        )
        cert=$(($(status_sum wsrep_local_cert_failures) - cert_before))
        bf=$(($(status_sum wsrep_local_bf_aborts) - bf_before))
        retried=$(($(retries) - retries_before))
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$scenario" "$sums" "$cert" "$bf" "$retried" >>"$results"
        log "$n node(s), $scenario: $(tail -1 "$results")"
    done
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
done

python3 - "$results" >target/galera-load.md <<'PY'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
one = {r[1]: float(r[2]) for r in rows if r[0] == "1"}
print("| nodes | figure | req/s | flows/s | ratio to 1 node | p99 ms (worst instance) | errors | statuses | certification failures | brute-force aborts | retries |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for n, scenario, rps, flows, p99, errors, codes, cert, bf, retried in rows:
    base = one.get(scenario)
    ratio = f"{float(rps) / base:.2f}x" if base else "n/a"
    flows = flows if scenario == "flow" else ""
    print(f"| {n} | {scenario} | {int(float(rps)):,} | {flows} | {ratio} | {p99} | {errors} | {codes} | {cert} | {bf} | {retried} |")
PY
cat target/galera-load.md
