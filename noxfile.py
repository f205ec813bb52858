"""Quality gates: ``nox -s lint typecheck tests docs bench-smoke`` (``scripts/test.sh``, CI)."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "typecheck", "tests", "docs", "bench-smoke"]

PYTHON = "3.11"
SOURCES = [
    p for p in ("src", "tests", "examples", "bench", "scripts", "noxfile.py") if Path(p).exists()
]


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the library."""
    session.install("-e", ".[dev]")
    session.run("mypy", "src/kuya_store")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite on SQLite, real PostgreSQL and real Redis, with coverage."""
    session.install("-e", ".[dev]")
    session.run(
        "pytest",
        # Most tests wait on servers, sleeps and subprocesses: three workers keep two cores
        # busy. Each worker starts its own servers; give `-n 0` to run in one process.
        "--numprocesses=3",
        "--dist=worksteal",
        "--cov=kuya_store",
        "--cov-report=term",
        # The slowest tests, printed with every run: where the suite's time goes.
        "--durations=15",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site, built with --strict: a broken link or a bare public name fails."""
    session.install("-e", ".[docs]")
    site = Path(session.create_tmp()) / "site"
    # The theme's notice about a future MkDocs release is not about this site.
    env = {"NO_MKDOCS_2_WARNING": "1"}
    session.run("mkdocs", "build", "--strict", "--site-dir", str(site), env=env)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against raw drivers and peer libraries: ``nox -s bench -- [--only NAME]``.

    The HTTP load benchmark serves the apps with uvicorn (in ``dev``) and drives them with
    Debian's ``wrk``, which it installs with apt when missing and running as root.
    """
    session.install("-e", ".[dev]", "cashews>=7")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session(python=PYTHON, name="bench-smoke")
def bench_smoke(session: nox.Session) -> None:
    """Every benchmark in its short form (CI): each section must run to its end.

    No figure is checked: timings on a shared machine say nothing, the full run does.
    """
    session.install("-e", ".[dev]", "cashews>=7")
    session.run("python", "-m", "bench", "--quick")
