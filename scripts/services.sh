#!/usr/bin/env bash
# Start or stop the PostgreSQL and Redis servers the test suite runs against.
#
#   bash scripts/services.sh start [STATE_DIR]   # then: source STATE_DIR/env
#   bash scripts/services.sh stop  [STATE_DIR]
#   bash scripts/services.sh status [STATE_DIR]
#
# STATE_DIR defaults to .services in the repository root. Starting twice reuses the
# servers if they are still alive, otherwise replaces them.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    echo "usage: $0 start|stop|status [STATE_DIR]" >&2
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
command="$1"
case "$command" in
    start | stop | status) ;;
    *) usage ;;
esac
state_dir="${2:-$root/.services}"

python="$root/.venv/bin/python"
[[ -x "$python" ]] || python="$(command -v python3)"

exec "$python" "$root/src/kuya_store/testing/servers.py" "$command" --state-dir "$state_dir"
