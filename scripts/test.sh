#!/usr/bin/env bash
# Sets up everything (virtual environments, packages, a Redis and a PostgreSQL server)
# and runs every check: ruff, mypy --strict, and the whole suite with coverage.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
# The servers themselves are started by the test suite (tests/servers.py), which
# installs redis-server or PostgreSQL with apt when this machine lacks them.
exec nox --sessions lint typecheck tests "$@"
