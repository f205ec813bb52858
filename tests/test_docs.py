"""Every complete example in the docs and the README runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _examples() -> list[tuple[str, str]]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for index, code in enumerate(BLOCK.findall(page.read_text())):
            # Complete programs only; fragments show one call in context.
            complete = ("asyncio.run(main())", "with ks.SyncCompsStore(", "KuyaStore.close(app)")
            if any(m in code for m in complete) or code.startswith(
                "import kuya_store as ks\n\nurl"
            ):
                found.append((f"{page.name}#{index}", code))
    return found


@pytest.mark.parametrize(("name", "code"), _examples(), ids=[n for n, _ in _examples()])
def test_example_runs(name: str, code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-3000:]}"
