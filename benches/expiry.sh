#!/usr/bin/env bash
# The expiry storm: a flash sale grants most of its holds in its first seconds, and they lapse
# together one hold TTL later. This measures how holds and reads of that product behave before
# and across that moment. One release build of the server and of flashsale-load, then, on SQLite
# (a file under target/) and on MariaDB (a fresh database flashsale_expiry at 127.0.0.1:3306,
# created and dropped here), with durable commits (the server's defaults):
#
#   start the server with --hold-ttl EXPIRY_TTL; create one product with stock 100,000,000;
#   run `flashsale-load run --scenario expiry-storm`: fill the product with EXPIRY_FILL holds
#   over EXPIRY_FILL_CONNECTIONS connections, then send holds and GETs on it (half the
#   connections each) over EXPIRY_CONNECTIONS connections for EXPIRY_BEFORE seconds before the
#   first of the fill's holds lapses and for EXPIRY_ACROSS seconds across the lapse; print the
#   two windows side by side with the server's CPU time per phase (flashsale-load reads
#   /proc/PID/stat through --server-pid), and the server's RSS (VmRSS of /proc/PID/status) at
#   the end of the run; stop the server.
#
# It edits no document: it prints the figures and keeps each run's JSON, its printed figures
# and the server's log in target/expiry/<UTC time>/. A run whose fill leaves less TTL than the
# before window needs fails with the figures of the fill (raise EXPIRY_TTL, or lower
# EXPIRY_FILL); the other database still runs, and the script then exits with 1.
#
# The load generator and the server share the machine, so read the figures as ratios between
# the two windows of one run, on a quiet machine: it waits for running cargo/rustc processes
# before each run, and fails if they do not finish.
#
# Environment:
#   EXPIRY_FILL=1000000            holds the fill grants
#   EXPIRY_TTL=120s                the server's --hold-ttl; it must outlast the fill by the
#                                  before window and a second. A million holds took ~35 s at
#                                  the ~29,000 hot holds/s of docs/PERFORMANCE.md, and over
#                                  60 s while a build shared the cores, so 40 s is too short
#   EXPIRY_FILL_CONNECTIONS=256    connections of the fill
#   EXPIRY_CONNECTIONS=64          connections of the windows (half hold, half GET)
#   EXPIRY_BEFORE=8 EXPIRY_ACROSS=20   the windows, in seconds
#   EXPIRY_TIMEOUT=10              seconds after which a request counts as an error
#   EXPIRY_QUICK=1                 smoke test: fill 20,000 at TTL 15 s, windows of 3 s and 8 s
#                                  (each setting above still wins when it is set)
#   EXPIRY_DATABASES="sqlite mariadb"
#   EXPIRY_PORT=18300              the server's port on 127.0.0.1
#   EXPIRY_MYSQL_URL=mysql://root@127.0.0.1:3306   MariaDB server (root, empty password)
#   EXPIRY_NO_BUILD=1              use the binaries already in target/release
#   EXPIRY_SERVER=PATH             the server binary to measure (default target/release/flashsale):
#                                  another build's, to compare two builds under one generator
#   EXPIRY_BUILD_WAIT=1800         seconds to wait for other cargo/rustc processes before a run
#   EXPIRY_IGNORE_BUILDS=1         run even while cargo/rustc run (figures are then noise)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=${EXPIRY_QUICK:-0}
if [[ $quick == 1 ]]; then
    fill=${EXPIRY_FILL:-20000}
    ttl=${EXPIRY_TTL:-15s}
    before=${EXPIRY_BEFORE:-3}
    across=${EXPIRY_ACROSS:-8}
else
    fill=${EXPIRY_FILL:-1000000}
    ttl=${EXPIRY_TTL:-120s}
    before=${EXPIRY_BEFORE:-8}
    across=${EXPIRY_ACROSS:-20}
fi
fill_connections=${EXPIRY_FILL_CONNECTIONS:-256}
connections=${EXPIRY_CONNECTIONS:-64}
timeout=${EXPIRY_TIMEOUT:-10}
databases=${EXPIRY_DATABASES:-sqlite mariadb}
port=${EXPIRY_PORT:-18300}
mysql_url=${EXPIRY_MYSQL_URL:-mysql://root@127.0.0.1:3306}
mysql_database=flashsale_expiry
build_wait=${EXPIRY_BUILD_WAIT:-1800}

target="http://127.0.0.1:$port"
admin_token=bench-admin-token-0001
webhook_secret=bench-webhook-secret-0001
stock=100000000

server=${EXPIRY_SERVER:-target/release/flashsale}
load=target/release/flashsale-load

script=expiry.sh
prefix=EXPIRY
# shellcheck source=benches/lib.sh
source benches/lib.sh

mkdir -p target/expiry
results=target/expiry/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$results"
# The databases are scratch (a million holds make a large file); the results are kept.
work=$(mktemp -d target/expiry.XXXXXX)
server_pid=""
mariadb_created=0
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ ${EXPIRY_NO_BUILD:-0} != 1 ]]; then
    log "building (release): flashsale-server, flashsale-benches"
    cargo build --release -p flashsale-server -p flashsale-benches
fi
[[ -x $server ]] || die "$server is missing (build it, or unset EXPIRY_NO_BUILD)"
[[ -x $load ]] || die "$load is missing (build it, or unset EXPIRY_NO_BUILD)"

if curl -s -o /dev/null --max-time 2 "$target/healthz"; then
    die "something already answers on $target; set EXPIRY_PORT"
fi

# start_server DATABASE_URL LOG
start_server() {
    local url=$1 log_file=$2
    "$server" serve --bind "127.0.0.1:$port" --database-url "$url" --admin-token "$admin_token" \
        --webhook-secret "$webhook_secret" --hold-ttl "$ttl" >"$log_file" 2>&1 &
    server_pid=$!
    await_ready "$log_file" && return 0
    cat "$log_file" >&2
    die "the server exited during start-up"
}

# The server's resident memory in KiB, from /proc (empty once it has exited).
server_rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status" 2>/dev/null || true
}

# storm LABEL DATABASE_URL: one expiry storm on a fresh server; 1 if the run failed.
storm() {
    local db=$1 url=$2 name=${1,,}
    start_server "$url" "$results/server-$name.log"
    local product
    product=$("$load" setup --target "$target" --admin-token "$admin_token" --stock "$stock" \
        --name "Expiry") || die "creating the product failed ($db)"
    wait_for_quiet_machine
    log "$db: expiry storm on product $product: fill $fill holds (TTL $ttl," \
        "$fill_connections connections), windows ${before} s and ${across} s" \
        "($connections connections)"
    local status=0
    "$load" run --target "$target" --scenario expiry-storm --product "$product" --fill "$fill" \
        --fill-connections "$fill_connections" --connections "$connections" --before "$before" \
        --across "$across" --timeout "$timeout" --server-pid "$server_pid" \
        --output "$results/$name.json" | tee "$results/$name.txt" || status=1
    local rss
    rss=$(server_rss_kib)
    if [[ -n $rss ]]; then
        echo "$db: the server's RSS at the end of the run: $rss KiB ($((rss / 1024)) MiB)" |
            tee -a "$results/$name.txt"
    fi
    stop_server
    ((status == 0)) || log "$db: the expiry storm failed (see above)"
    return "$status"
}

failed=0
for database in $databases; do
    case $database in
    sqlite)
        storm "SQLite" "sqlite:$work/expiry.db" || failed=1
        ;;
    mariadb)
        mariadb_client -e "SELECT 1" >/dev/null ||
            die "MariaDB does not answer on 127.0.0.1:3306 as root (bash .ci/mariadb.sh starts one)"
        mariadb_client -e "DROP DATABASE IF EXISTS $mysql_database; CREATE DATABASE $mysql_database"
        mariadb_created=1
        storm "MariaDB" "$mysql_url/$mysql_database" || failed=1
        mariadb_client -e "DROP DATABASE IF EXISTS $mysql_database"
        mariadb_created=0
        ;;
    *) die "unknown database '$database' in EXPIRY_DATABASES (sqlite, mariadb)" ;;
    esac
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
log "commit $commit, $(nproc) cores; the figures, JSON and server logs are in $results"
exit "$failed"
