"""PostgreSQL's own programs for the harness: found (or installed), run, and initdb'd once.

The server programs refuse to run as root, so as root they run as the ``postgres`` user,
always in an environment without stray ``PG*`` variables. Only the standard library is used.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

from kuya_store.testing.loopback import _installed, _is_root, _mkdtemp

__all__ = ["SUPERUSER", "ensure_postgres_installed"]

SUPERUSER = "postgres"


def _clean_env() -> dict[str, str]:
    # Stray PG* variables (PGHOST, PGPASSWORD, PGSERVICE, ...) would redirect or alter
    # the client tools; a fixed C locale keeps initdb deterministic.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _find_postgres_bin() -> Path | None:
    def version_key(path: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in path.parent.name.split("."))
        except ValueError:
            return (0,)

    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()]
    if debian:
        return max(debian, key=version_key)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    return None


def ensure_postgres_installed() -> Path:
    """Return the PostgreSQL server bin dir (newest version), installing it with apt if needed."""
    return _installed(_find_postgres_bin, "postgresql", "PostgreSQL server binaries (pg_ctl)")


def _as_postgres(args: list[str]) -> list[str]:
    """The command line that runs ``args`` as the server user (itself, unless root)."""
    if not _is_root():
        return args
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", SUPERUSER, "--", *args]


def _run(
    args: list[str],
    *,
    as_owner: bool,
    check: bool = True,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program; ``as_owner`` runs it as the server user, ``env`` adds to
    the clean environment; with ``check`` a non-zero exit raises with its output."""
    cmd = _as_postgres(args) if as_owner else args
    # cwd "/" because runuser keeps the caller's cwd, which postgres may not be able to read.
    result = subprocess.run(
        cmd,
        cwd="/",
        env={**_clean_env(), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(shlex.quote(a) for a in args)} failed "
            f"(exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


def _hand_over(path: Path) -> None:
    """Make ``path`` usable by the server user when running as root."""
    if not _is_root():
        return
    entry = pwd.getpwnam(SUPERUSER)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(path, 0o755)
    # The server user must be able to walk down to its directories; grant search
    # (not read) permission on ancestors that lack it, e.g. private pytest temp roots.
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)


# initdb takes about a second while copying a fresh cluster takes a few milliseconds, so
# each process runs initdb once per PostgreSQL version and copies the result.
_TEMPLATES: dict[Path, Path] = {}


@atexit.register
def _remove_templates() -> None:
    for template in _TEMPLATES.values():
        shutil.rmtree(template.parent, ignore_errors=True)
    _TEMPLATES.clear()


def _initdb(bin_dir: Path, data_dir: Path) -> None:
    """Create a fresh cluster in ``data_dir`` (missing yet) as a copy of this process's
    template for ``bin_dir``, running initdb for the template the first time."""
    template = _TEMPLATES.get(bin_dir)
    if template is None or not (template / "PG_VERSION").is_file():
        holder = _mkdtemp("kuya-pg-template-")
        _hand_over(holder)
        template = holder / "data"
        _run(
            [
                str(bin_dir / "initdb"),
                "--no-sync",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                SUPERUSER,
                "-D",
                str(template),
            ],
            as_owner=True,
        )
        _TEMPLATES[bin_dir] = template
    _run(["cp", "-a", str(template), str(data_dir)], as_owner=True)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
