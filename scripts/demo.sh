#!/usr/bin/env bash
# The main job: install kuya-store and run its demo on a SQLite file of its own
# (./kuya-demo.db plus the in-process hot tier). Nothing else is needed.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
uv pip install --quiet --python .venv/bin/python -e .
exec .venv/bin/kuya-store demo "$@"
