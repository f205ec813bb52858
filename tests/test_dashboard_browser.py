"""The admin dashboard, loaded in headless Chromium over real HTTP, renders what it should."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from werkzeug.serving import make_server

from kuya_store.testing.servers import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CARDS = ["2023 Topps Chrome Victor Wembanyama #1", "1986 Fleer Michael Jordan #57"]
# Flags that keep Chromium from reaching for the network on a machine that has none.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: scripts/test.sh installs Debian's chromium package"
    return path


@pytest.fixture
def served(sqlite_url: str) -> Iterator[str]:
    spec = importlib.util.spec_from_file_location(
        "kuya_examples_flask_browser", EXAMPLES / "flask_app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    app = module.create_app(database_url=sqlite_url)
    client = app.test_client()
    for card in CARDS:
        for _ in range(3):
            assert client.get("/comps", query_string={"query": card}).status_code == 200
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    module.KuyaStore.close(app)


def test_dashboard_renders_in_chromium(served: str, tmp_path: Path) -> None:
    common = [
        _chromium(),
        *FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [*common, "--dump-dom", f"{served}/admin"], capture_output=True, text=True, timeout=90
    ).stdout
    assert "Top searches" in dom
    assert 'id="hit-rate"' in dom and "66.7%" in dom  # 4 hits of 6 searches
    assert 'id="api-calls-saved"' in dom
    for card in CARDS:
        assert card in dom
    # The script ran: it loaded the chart of the top card (ties: the latest searched first).
    assert 'data-loaded="1986-fleer-michael-jordan-57"' in dom, dom[-2000:]
    assert "<svg" in dom and 'class="market-value"' in dom

    shot = tmp_path / "dashboard.png"
    subprocess.run(
        [*common, "--window-size=1200,900", f"--screenshot={shot}", f"{served}/admin"],
        capture_output=True,
        timeout=90,
    )
    assert shot.exists() and shot.stat().st_size > 10_000
    shutil.copy(shot, Path(tempfile.gettempdir()) / "kuya-dashboard.png")


def test_chart_endpoint_renders_as_an_image(served: str, tmp_path: Path) -> None:
    url = f"{served}/analytics/{quote(CARDS[1], safe='')}/chart.svg"
    dom = subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'p'}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=90,
    ).stdout
    assert "market-value" in dom and "1986-fleer-michael-jordan-57" in dom


def test_card_search_box_in_chromium(served: str, tmp_path: Path) -> None:
    dom = subprocess.run(
        [
            _chromium(),
            *FLAGS,
            f"--user-data-dir={tmp_path / 'p'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            f"{served}/admin?q=jordn+fleer",  # a typo
        ],
        capture_output=True,
        text=True,
        timeout=90,
    ).stdout
    form = dom.split('id="card-search"', 1)[1]
    assert 'value="jordn fleer"' in form
    results = dom.split('id="card-matches"', 1)[1].split("</ul>", 1)[0]
    assert 'data-card="1986-fleer-michael-jordan-57"' in results
    assert "3 searches" in results
