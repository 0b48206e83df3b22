#!/usr/bin/env bash
# HTTP load figures for docs/PERFORMANCE.md: one release build of the server and of
# flashsale-load, then, on SQLite (a file under target/) and on MariaDB (database
# flashsale_load, created and dropped here), with durable commits (the server's defaults):
#
#   GET /healthz (the HTTP stack's ceiling); GET a product with no holds; hot holds (every
#   connection on one product) with the default group commit; holds spread at random over
#   1,000 products; the whole flow (hold -> order -> signed webhook) over the same 1,000
#   products; GET the hot product once at least 100,000 holds on it are active; holds on a
#   sold-out product (all 409); then, restarted with --batch-max 1 --cache-staleness 0s (one
#   transaction per request), GET with no holds and with >= 100,000, hot holds, spread holds
#   and the flow.
#
# for 64 and 256 connections each, then writes the table between <!-- load:begin --> and
# <!-- load:end --> in docs/PERFORMANCE.md (a "## HTTP load" section is appended if the markers
# are absent; nothing else in the file changes) and the chart docs/load.svg.
#
# The load generator and the server share the machine, so compare figures as ratios within one
# run (healthz is the ceiling), and run this on a quiet machine: it waits for running
# cargo/rustc processes before each run, and fails if they do not finish.
#
# Environment:
#   LOAD_DURATION=10       measured seconds per run (after LOAD_WARMUP=1 seconds discarded)
#   LOAD_QUICK=1           smoke test: 64 connections, 3 s runs, and the doc and chart go to
#                          target/load-quick/ instead of docs/ unless LOAD_DOC/LOAD_SVG are set
#   LOAD_CONNECTIONS="64 256"   connection counts
#   LOAD_DATABASES="sqlite mariadb"
#   LOAD_DOC, LOAD_SVG     where the markdown and the chart go
#   LOAD_PORT=18000        the server's port on 127.0.0.1
#   LOAD_MYSQL_URL=mysql://root@127.0.0.1:3306   MariaDB server (root, empty password)
#   LOAD_NO_BUILD=1        use the binaries already in target/release
#   LOAD_SERVER=PATH       the server binary to measure (default target/release/flashsale):
#                          another build's, to compare two builds under one generator
#   LOAD_NO_BATCH_FLAG=1   escape hatch for a server that does not have --batch-max yet:
#                          the "unbatched" runs then use the server's default, and say so
#   LOAD_BUILD_WAIT=1800   seconds to wait for other cargo/rustc processes before a run
#   LOAD_IGNORE_BUILDS=1   run even while cargo/rustc run (figures are then noise)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=${LOAD_QUICK:-0}
duration=${LOAD_DURATION:-10}
warmup=${LOAD_WARMUP:-1}
connections_list=${LOAD_CONNECTIONS:-64 256}
doc=${LOAD_DOC:-docs/PERFORMANCE.md}
svg=${LOAD_SVG:-docs/load.svg}
if [[ $quick == 1 ]]; then
    duration=3
    connections_list=64
    doc=${LOAD_DOC:-target/load-quick/PERFORMANCE.md}
    svg=${LOAD_SVG:-target/load-quick/load.svg}
fi
databases=${LOAD_DATABASES:-sqlite mariadb}
port=${LOAD_PORT:-18000}
mysql_url=${LOAD_MYSQL_URL:-mysql://root@127.0.0.1:3306}
mysql_database=flashsale_load
build_wait=${LOAD_BUILD_WAIT:-1800}

target="http://127.0.0.1:$port"
admin_token=bench-admin-token-0001
webhook_secret=bench-webhook-secret-0001
hot_stock=2000000000
flow_stock=1000000
flow_products=1000
active_holds_min=100000
# Setup phases (placing the missing active holds) are bounded too, just longer.
setup_duration=900

server=${LOAD_SERVER:-target/release/flashsale}
load=target/release/flashsale-load

script=load.sh
prefix=LOAD
# shellcheck source=benches/lib.sh
source benches/lib.sh

# The exact command, for the document: the LOAD_* variables that were set, then the script.
command_line=$(
    env | grep -E '^LOAD_[A-Z_]+=' | sort | tr '\n' ' ' || true
)"bash benches/load.sh"

mkdir -p target
work=$(mktemp -d target/load.XXXXXX)
results="$work/results.jsonl"
server_pid=""
mariadb_created=0
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ ${LOAD_NO_BUILD:-0} != 1 ]]; then
    log "building (release): flashsale-server, flashsale-benches"
    cargo build --release -p flashsale-server -p flashsale-benches
fi
[[ -x $server ]] || die "$server is missing (build it, or unset LOAD_NO_BUILD)"
[[ -x $load ]] || die "$load is missing (build it, or unset LOAD_NO_BUILD)"

batch_flag=1
unbatched=", --batch-max 1"
if [[ ${LOAD_NO_BATCH_FLAG:-0} == 1 ]]; then
    batch_flag=0
    unbatched=", default batching (LOAD_NO_BATCH_FLAG=1)"
    log "LOAD_NO_BATCH_FLAG=1: not passing --batch-max 1; the unbatched rows are the default"
else
    serve_help=$("$server" serve --help 2>&1) || die "$server serve --help failed: $serve_help"
    [[ $serve_help == *--batch-max* ]] ||
        die "$server serve does not accept --batch-max; build a server that has it, or set LOAD_NO_BATCH_FLAG=1 to measure without it"
fi

if curl -s -o /dev/null --max-time 2 "$target/healthz"; then
    die "something already answers on $target; set LOAD_PORT"
fi

# start_server DATABASE_URL MODE LOG: MODE is batched (the default) or unbatched.
start_server() {
    local url=$1 mode=$2 log_file=$3
    local args=(serve --bind "127.0.0.1:$port" --database-url "$url" --admin-token "$admin_token"
        --webhook-secret "$webhook_secret" --hold-ttl 1h)
    if [[ $mode == unbatched && $batch_flag == 1 ]]; then
        args+=(--batch-max 1 --cache-staleness 0s)
    fi
    "$server" "${args[@]}" >"$log_file" 2>&1 &
    server_pid=$!
    await_ready "$log_file" && return 0
    if grep -q -- 'batch-max' "$log_file"; then
        die "the server rejected --batch-max (see $log_file); set LOAD_NO_BATCH_FLAG=1 to measure without it"
    fi
    cat "$log_file" >&2
    die "the server exited during start-up"
}

# setup COUNT STOCK NAME: creates products, prints their ids one per line.
setup() {
    "$load" setup --target "$target" --admin-token "$admin_token" --products "$1" --stock "$2" \
        --name "$3"
}

# measure DB FIGURE CONNECTIONS RUN-ARGS...: one measured run, appended to the results.
measure() {
    local db=$1 figure=$2 connections=$3
    shift 3
    wait_for_quiet_machine
    log "$db: $figure, $connections connections, ${duration}s"
    "$load" run --target "$target" --connections "$connections" --duration "$duration" \
        --warmup "$warmup" --output "$work/run.json" "$@" ||
        die "flashsale-load run failed ($db, $figure, $connections connections)"
    printf '{"db":"%s","figure":"%s","connections":%s,"result":%s}\n' \
        "$db" "$figure" "$connections" "$(cat "$work/run.json")" >>"$results"
}

# held_units PRODUCT: units held on a product that has no orders (stock - available).
held_units() {
    local body stock available
    body=$(curl -fsS --max-time 10 "$target/api/products/$1") || die "GET /api/products/$1 failed"
    stock=$(sed -E 's/.*"stock":([0-9]+).*/\1/' <<<"$body")
    available=$(sed -E 's/.*"available":([0-9]+).*/\1/' <<<"$body")
    [[ $stock =~ ^[0-9]+$ && $available =~ ^[0-9]+$ ]] || die "unexpected product body: $body"
    echo $((stock - available))
}

# suite LABEL DATABASE_URL: every figure on one database.
suite() {
    local db=$1 url=$2 c
    local logs="$work/server-${db,,}"
    start_server "$url" batched "$logs-batched.log"
    local hot hot_unbatched sold_out flow_ids
    hot=$(setup 1 "$hot_stock" "Hot")
    hot_unbatched=$(setup 1 "$hot_stock" "Hot unbatched")
    sold_out=$(setup 1 0 "Sold out")
    local flow_text
    flow_text=$(setup "$flow_products" "$flow_stock" "Flow")
    mapfile -t flow_ids <<<"$flow_text"
    local first=${flow_ids[0]} last=${flow_ids[${#flow_ids[@]} - 1]}
    ((last - first + 1 == flow_products)) || die "flow product ids are not contiguous: $first..$last"
    log "$db: products hot=$hot hot-unbatched=$hot_unbatched sold-out=$sold_out flow=$first..$last"

    for c in $connections_list; do measure "$db" "healthz" "$c" --scenario healthz; done
    for c in $connections_list; do
        measure "$db" "GET product, no holds" "$c" --scenario get-product --product "$hot"
    done
    for c in $connections_list; do
        measure "$db" "hot holds" "$c" --scenario hot-holds --product "$hot"
    done
    for c in $connections_list; do
        measure "$db" "spread holds, 1,000 products" "$c" --scenario spread-holds \
            --products "$first..$last"
    done
    for c in $connections_list; do
        measure "$db" "flow" "$c" --scenario flow --products "$first..$last" \
            --webhook-secret "$webhook_secret"
    done

    # GET the hot product again once at least $active_holds_min holds on it are active (the
    # hold TTL is 1 h, so none expire): place the missing ones first, unmeasured.
    local held missing
    held=$(held_units "$hot")
    missing=$((active_holds_min - held))
    if ((missing > 0)); then
        log "$db: placing $missing more holds on product $hot (it has $held)"
        "$load" run --target "$target" --scenario hot-holds --product "$hot" --connections 64 \
            --requests "$missing" --warmup 0 --duration "$setup_duration" >/dev/null ||
            die "placing the missing holds failed"
        held=$(held_units "$hot")
        ((held >= active_holds_min)) || die "only $held holds active on product $hot"
    fi
    log "$db: product $hot has $held active holds"
    for c in $connections_list; do
        measure "$db" "GET product, ≥100k active holds" "$c" --scenario get-product --product "$hot"
    done
    for c in $connections_list; do
        measure "$db" "hot holds, sold out (409)" "$c" --scenario hot-holds --product "$sold_out"
    done

    # The comparison mode: one transaction per request and no availability cache, with the
    # unbatched hot holds on a product of their own so both modes start from one without holds.
    stop_server
    start_server "$url" unbatched "$logs-unbatched.log"
    for c in $connections_list; do
        measure "$db" "GET product, no holds, cache off" "$c" --scenario get-product \
            --product "$hot_unbatched"
    done
    for c in $connections_list; do
        measure "$db" "GET product, ≥100k active holds, cache off" "$c" --scenario get-product \
            --product "$hot"
    done
    for c in $connections_list; do
        measure "$db" "hot holds$unbatched" "$c" --scenario hot-holds --product "$hot_unbatched"
    done
    for c in $connections_list; do
        measure "$db" "spread holds, 1,000 products$unbatched" "$c" --scenario spread-holds \
            --products "$first..$last"
    done
    for c in $connections_list; do
        measure "$db" "flow$unbatched" "$c" --scenario flow --products "$first..$last" \
            --webhook-secret "$webhook_secret"
    done
    stop_server
}

mariadb_settings=""
for database in $databases; do
    case $database in
    sqlite)
        suite "SQLite" "sqlite:$work/load.db"
        ;;
    mariadb)
        mariadb_client -e "SELECT 1" >/dev/null ||
            die "MariaDB does not answer on 127.0.0.1:3306 as root (bash .ci/mariadb.sh starts one)"
        mariadb_client -e "DROP DATABASE IF EXISTS $mysql_database; CREATE DATABASE $mysql_database"
        mariadb_created=1
        mariadb_settings=$(mariadb_client -N -e \
            "SELECT CONCAT('MariaDB ', @@version, ', innodb_flush_log_at_trx_commit=', @@innodb_flush_log_at_trx_commit, ', sync_binlog=', @@sync_binlog)")
        suite "MariaDB" "$mysql_url/$mysql_database"
        mariadb_client -e "DROP DATABASE IF EXISTS $mysql_database"
        mariadb_created=0
        ;;
    *) die "unknown database '$database' in LOAD_DATABASES (sqlite, mariadb)" ;;
    esac
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed -E 's/^ +//' || echo unknown)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
{
    echo "Measured with \`$command_line\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit."
    echo "Machine: $(nproc) cores ($cpu), Linux $(uname -r); the server and the load generator"
    echo "(\`flashsale-load\`, one thread, keep-alive HTTP/1.1) share it, so read the figures as"
    echo "ratios within this run, with \`healthz\` as the ceiling. ${warmup} s warm-up discarded,"
    echo "then ${duration} s measured per cell. Durable commits: SQLite WAL with synchronous=FULL"
    if [[ -n $mariadb_settings ]]; then echo "(file under target/), $mariadb_settings."; else echo "(file under target/)."; fi
    echo "Hot holds: every connection places \`qty 1\` holds on one product (stock 2,000,000,000,"
    echo "hold TTL 1 h, so every hold stays active); each batching mode has its own product. Spread"
    echo "holds draw each request's product at random from 1,000 (stock 1,000,000 each). The flow"
    echo "is hold → order → signed \`paid\` webhook, round robin over the same 1,000 products."
} >"$work/preamble.md"

mkdir -p "$(dirname "$doc")" "$(dirname "$svg")"
if [[ ! -e $doc && -e docs/PERFORMANCE.md && $doc != docs/PERFORMANCE.md ]]; then
    cp docs/PERFORMANCE.md "$doc"
fi
cp "$results" target/load-results.jsonl
"$load" report --input "$results" --svg "$svg" --doc "$doc" --preamble "$work/preamble.md"
log "wrote $doc and $svg (the raw results: target/load-results.jsonl)"
