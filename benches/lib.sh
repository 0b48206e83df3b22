# The helpers benches/load.sh and benches/expiry.sh share; sourced, not run. The sourcing script
# sets, before it calls them: script (its name, for messages), prefix (its environment variables'
# prefix: LOAD, EXPIRY), target, mysql_database, work, build_wait; server_pid and
# mariadb_created start empty and 0.

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf '%s: %s\n' "$script" "$*" >&2
    exit 1
}

stop_server() {
    [[ -n $server_pid ]] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

mariadb_client() {
    mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -u root "$@"
}

# On exit: the server stopped, the MariaDB database this script created dropped, scratch removed.
cleanup() {
    stop_server
    if [[ $mariadb_created == 1 ]]; then
        mariadb_client -e "DROP DATABASE IF EXISTS $mysql_database" || true
    fi
    rm -rf "$work"
}

# Whether a cargo or rustc process is running (pgrep -x takes one name of at most 15 chars).
builds_running() {
    local name
    for name in cargo rustc cargo-clippy clippy-driver; do
        pgrep -x "$name" >/dev/null && return 0
    done
    return 1
}

# Before each run: no cargo or rustc may be running, or the figures measure the build.
# ${prefix}_IGNORE_BUILDS=1 runs anyway, with a warning.
wait_for_quiet_machine() {
    local waited=0 ignore="${prefix}_IGNORE_BUILDS"
    while builds_running; do
        if [[ ${!ignore:-0} == 1 ]]; then
            log "warning: cargo/rustc are running; these figures are noise"
            return 0
        fi
        ((waited < build_wait)) ||
            die "cargo/rustc still running after ${build_wait}s ($ignore=1 runs anyway)"
        ((waited % 60 != 0)) || log "waiting for running cargo/rustc processes to finish"
        sleep 5
        waited=$((waited + 5))
    done
}

# await_ready LOG: waits up to 60 s for the server ($server_pid) to answer $target/readyz.
# Returns 1 (server_pid emptied) if the server exited first; dies if it is still not ready.
await_ready() {
    local log_file=$1 code
    for ((i = 0; i < 300; i++)); do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            wait "$server_pid" 2>/dev/null || true
            server_pid=""
            return 1
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$target/readyz" || true)
        [[ $code != 200 ]] || return 0
        sleep 0.2
    done
    die "the server was not ready within 60 s (see $log_file)"
}
