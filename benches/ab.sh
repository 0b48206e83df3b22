#!/usr/bin/env bash
# Two server builds compared under one load generator, interleaved, on MariaDB: for each round and
# each build (their order alternating between rounds), a fresh database flashsale_ab, the server
# started on it, a hot product and 1,000 flow products created, then each scenario for
# AB_DURATION seconds after 1 s of warm-up. One line per run: req/s, p99, and the CPU time (user
# and system, from /proc) the server and mariadbd spent per request answered. These machines are
# noisy: read medians over several rounds, never one run.
#
#   AB_BEFORE=/path/to/old/flashsale AB_AFTER=target/release/flashsale bash benches/ab.sh
#
# Environment: AB_ROUNDS=4, AB_SCENARIOS="hot-holds spread-holds flow", AB_CONNECTIONS=256,
# AB_DURATION=10, AB_PORT=18700. MariaDB at 127.0.0.1:3306 as root with no password (its
# process must run on this machine); target/release/flashsale-load must be built
# (cargo build --release -p flashsale-benches).
set -euo pipefail
cd "$(dirname "$0")/.."

script=ab.sh
before=${AB_BEFORE:?set AB_BEFORE to the first server binary}
after=${AB_AFTER:-target/release/flashsale}
rounds=${AB_ROUNDS:-4}
scenarios=${AB_SCENARIOS:-hot-holds spread-holds flow}
connections=${AB_CONNECTIONS:-256}
duration=${AB_DURATION:-10}
port=${AB_PORT:-18700}
target="http://127.0.0.1:$port"
admin_token=bench-admin-token-0001
webhook_secret=bench-webhook-secret-0001
load=target/release/flashsale-load
mysql_database=flashsale_ab
work=$(mktemp -d target/ab.XXXXXX)
server_pid=""
mariadb_created=0
# shellcheck source=benches/lib.sh
source benches/lib.sh
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -x $before && -x $after ]] || die "both server binaries must exist: $before, $after"
[[ -x $load ]] || die "$load is missing (cargo build --release -p flashsale-benches)"
mariadbd_pid=$(pgrep -x mariadbd | head -1) || die "no mariadbd process on this machine"
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run BUILD SCENARIO ARGS...: one measured run, one line.
run() {
    local build=$1 scenario=$2
    shift 2
    local s0 m0 s1 m1
    s0=$(ticks "$server_pid")
    m0=$(ticks "$mariadbd_pid")
    "$load" run --target "$target" --scenario "$scenario" --connections "$connections" \
        --duration "$duration" --warmup 1 --json "$@" >"$work/run.json"
    s1=$(ticks "$server_pid")
    m1=$(ticks "$mariadbd_pid")
    python3 - "$build" "$scenario" "$((s1 - s0))" "$((m1 - m0))" "$hz" "$duration" "$work/run.json" <<'PY'
import json, sys
build, scenario, server, mariadbd, hz, duration, path = sys.argv[1:]
run = json.load(open(path))
# The CPU was read over the warm-up too: count the measured share of it.
share = float(duration) / (float(duration) + 1.0)
per = lambda ticks: int(ticks) / int(hz) * 1e6 * share / max(run["requests"], 1)
print(f"{build:6} {scenario:13} {run['rps']:9.0f} req/s  p99 {run['p99_ms']:7.1f} ms  "
      f"server {per(server):6.1f} µs/req  mariadbd {per(mariadbd):6.1f} µs/req  "
      f"errors {run['errors']}")
PY
}

for round in $(seq 1 "$rounds"); do
    order="before after"
    ((round % 2 == 1)) || order="after before"
    for build in $order; do
        binary=$before
        [[ $build == before ]] || binary=$after
        mariadb_client -e "DROP DATABASE IF EXISTS $mysql_database; CREATE DATABASE $mysql_database"
        mariadb_created=1
        "$binary" serve --bind "127.0.0.1:$port" \
            --database-url "mysql://root@127.0.0.1:3306/$mysql_database" \
            --admin-token "$admin_token" --webhook-secret "$webhook_secret" --hold-ttl 1h \
            >"$work/server-$build.log" 2>&1 &
        server_pid=$!
        await_ready "$work/server-$build.log" || die "the $build server exited during start-up"
        hot=$("$load" setup --target "$target" --admin-token "$admin_token" --stock 2000000000 \
            --name Hot)
        flow=$("$load" setup --target "$target" --admin-token "$admin_token" --stock 1000000 \
            --products 1000 --name Flow)
        products="$(head -1 <<<"$flow")..$(tail -1 <<<"$flow")"
        printf 'round %s\n' "$round"
        for scenario in $scenarios; do
            case $scenario in
            hot-holds) run "$build" "$scenario" --product "$hot" ;;
            spread-holds) run "$build" "$scenario" --products "$products" ;;
            flow) run "$build" "$scenario" --products "$products" --webhook-secret "$webhook_secret" ;;
            *) die "unknown scenario $scenario (hot-holds, spread-holds, flow)" ;;
            esac
        done
        stop_server
    done
done
