"""What importing the package costs and needs: no optional extra, no Alembic until it migrates."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_leaves_alembic_for_when_a_migration_runs() -> None:
    # A web worker imports kuya_store at every start; Alembic was most of that cost.
    code = "import sys, kuya_store; print('alembic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_package_imports_without_the_redis_extra() -> None:
    # redis is an optional extra (kuya-store[redis]); the embedded default never needs it.
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import kuya_store as ks\n"
        "store = ks.CompsStore(database_url='sqlite+aiosqlite://', mode='cache_only')\n"
        "print(type(store).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "CompsStore"
