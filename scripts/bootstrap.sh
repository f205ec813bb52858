# Sourced by the other scripts: a virtual environment at .venv with uv and nox in it.
# Works on a fresh Debian machine as root, and when run again (it only adds what is missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v python3 >/dev/null; then
    echo "python3 is required (3.11 or newer)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if [ ! -x .venv/bin/uv ] || [ ! -x .venv/bin/nox ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check uv nox
fi
export PATH="$ROOT/.venv/bin:$PATH"
