#!/usr/bin/env bash
# Sets up everything (virtual environments, packages, a Redis and a PostgreSQL server)
# and runs every check: ruff, mypy --strict, the whole suite with coverage, the docs build,
# and every benchmark in its short form (it must run to its end; no timing is checked).
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
# The servers themselves are started by the test suite (kuya_store.testing.servers), which
# installs redis-server or PostgreSQL with apt when this machine lacks them.
# The dashboard's end-to-end test drives Debian's headless Chromium.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
exec nox --sessions lint typecheck tests docs bench-smoke "$@"
