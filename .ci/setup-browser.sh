#!/usr/bin/env bash
# The browser tests drive Debian's Chromium with Playwright's Python client (executable_path),
# so Playwright never downloads a browser of its own. Idempotent: installs only what is missing.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
fi
chromium --version
