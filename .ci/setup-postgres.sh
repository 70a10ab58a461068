#!/usr/bin/env bash
# The tracking-server tests (tests/test_server.py) start a real PostgreSQL with Debian's server
# binaries (initdb, pg_ctl), run as the `postgres` user the package creates when CI runs as
# root. Idempotent: installs only when the binaries are missing.
set -euo pipefail
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends postgresql
fi
initdb="$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)"
"$initdb" --version
