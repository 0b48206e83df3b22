#!/usr/bin/env bash
# Makes sure MariaDB answers on 127.0.0.1:3306 as root with an empty password over TCP and that
# the database `test` exists: what the MariaDB storage tests and end-to-end tests connect to.
# Idempotent, so CI and developers can run it before every test run: when MariaDB already
# answers it only checks the login and the database. Otherwise it installs MariaDB (Debian,
# apt-get) if the server binary is missing, starts it without systemd (CI containers have
# none), and lets root log in over TCP with the statements from the toolchain notes.
# It also installs what the fault tests start on their own: the Galera provider (galera-4) and
# rsync, for the three-node cluster they run on private ports.
# Exits non-zero with a message saying what failed if MariaDB is not usable at the end.
set -euo pipefail

readonly HOST=127.0.0.1
readonly PORT=3306
readonly DATABASE=test
# A cold first start initializes InnoDB files; on a slow CI disk that takes tens of seconds.
readonly START_WAIT_S=60
readonly SERVER_BIN=/usr/sbin/mariadbd

log() { printf 'mariadb.sh: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Runs a command as root: installing packages, starting the daemon and the unix-socket login
# (root@localhost authenticates by the OS user) all need it.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# `ping` succeeds even when the login is refused (the server is up), so it only says whether
# something listens; `tcp_login` says whether the tests will be able to log in.
tcp_ping() {
    command -v mariadb-admin >/dev/null 2>&1 &&
        mariadb-admin --protocol=TCP -h"$HOST" -P"$PORT" -uroot --connect-timeout=2 ping \
            >/dev/null 2>&1
}

tcp_login() {
    mariadb --protocol=TCP -h"$HOST" -P"$PORT" -uroot --connect-timeout=2 -e 'SELECT 1' \
        >/dev/null 2>&1
}

install_server() {
    log "installing mariadb-server and mariadb-client with apt-get"
    command -v apt-get >/dev/null 2>&1 || die "$SERVER_BIN is missing and apt-get is not available"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y mariadb-server mariadb-client
}

start_server() {
    # The package's postinst normally creates the system tables; a container image may have
    # dropped them, and mariadbd refuses to start without them.
    if ! as_root test -d /var/lib/mysql/mysql; then
        log "initializing the data directory"
        as_root mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    log "starting mariadbd on $HOST:$PORT"
    as_root mkdir -p /run/mysqld
    as_root chown mysql:mysql /run/mysqld
    as_root start-stop-daemon --start --oknodo --background --chuid mysql \
        --exec "$SERVER_BIN" -- --user=mysql --bind-address="$HOST" --port="$PORT"
    local deadline=$((SECONDS + START_WAIT_S))
    until tcp_ping; do
        if ((SECONDS >= deadline)); then
            die "mariadbd did not answer on $HOST:$PORT within ${START_WAIT_S}s;" \
                "run '$SERVER_BIN --user=mysql' in the foreground to see why"
        fi
        sleep 1
    done
}

# Debian's root@localhost authenticates by unix socket only; the tests connect over TCP with
# an empty password, so allow that too (keeping the socket login for this script).
grant_root_over_tcp() {
    log "allowing root over TCP with an empty password"
    as_root mariadb -uroot <<'SQL' || die "could not grant root over TCP through the unix socket"
ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
CREATE USER IF NOT EXISTS root@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
}

readonly GALERA_PROVIDER=/usr/lib/galera/libgalera_smm.so

install_galera() {
    if [[ -f $GALERA_PROVIDER ]] && command -v rsync >/dev/null 2>&1 &&
        command -v mariadb-install-db >/dev/null 2>&1; then
        return
    fi
    log "installing galera-4 and rsync with apt-get (the Galera cluster tests need them)"
    command -v apt-get >/dev/null 2>&1 || die "$GALERA_PROVIDER is missing and apt-get is not available"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y galera-4 rsync mariadb-server
    [[ -f $GALERA_PROVIDER ]] || die "galera-4 did not install $GALERA_PROVIDER"
}

main() {
    install_galera
    if ! tcp_ping; then
        if [[ ! -x $SERVER_BIN ]] || ! command -v mariadb-admin >/dev/null 2>&1; then
            install_server
        fi
        start_server
    fi
    if ! tcp_login; then
        grant_root_over_tcp
    fi
    mariadb --protocol=TCP -h"$HOST" -P"$PORT" -uroot \
        -e "CREATE DATABASE IF NOT EXISTS \`$DATABASE\`" ||
        die "cannot log in as root over TCP on $HOST:$PORT to create database '$DATABASE'"
    # The final word is an actual query in the database the tests use, not just a ping.
    mariadb --protocol=TCP -h"$HOST" -P"$PORT" -uroot -D"$DATABASE" -e 'SELECT 1' >/dev/null ||
        die "MariaDB is not usable as root@$HOST:$PORT with database '$DATABASE'"
    log "ready: mysql://root@$HOST:$PORT/$DATABASE"
}

main "$@"
