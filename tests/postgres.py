"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary folder, on 127.0.0.1.

The server is built from the machine's own binaries (``initdb``, ``pg_ctl`` on ``PATH`` or in
``/usr/lib/postgresql/<version>/bin``, where Debian's ``postgresql`` package puts them), listens on a
free port of 127.0.0.1 only, trusts local connections (it lives for one test session and holds
nothing), and is removed with its folder when stopped.

PostgreSQL refuses to run as root. When the tests run as root (as CI does), ``initdb`` and
``pg_ctl`` run as the ``postgres`` user through ``runuser`` and the data folder is handed to that
user. (pytest-postgresql, the usual plugin for this, refuses to start as root, hence this helper.)

Example:
    >>> with PostgresServer() as server:  # doctest: +SKIP
    ...     print(server.url)
    postgresql://postgres@127.0.0.1:54123/cuecard
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SEARCHED = "/usr/lib/postgresql/*/bin"


def find_binaries() -> Path | None:
    """The folder holding both ``initdb`` and ``pg_ctl`` (PATH first, then the newest Debian version), or None."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        # Debian puts wrappers or symbolic links on PATH: use the real folder, where postgres lives too.
        folder = Path(os.path.realpath(initdb)).parent
        if (folder / "pg_ctl").exists():
            return folder
    folders = sorted(glob.glob(SEARCHED), key=lambda path: _version(Path(path).parent.name), reverse=True)
    for folder in folders:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def missing_reason() -> str | None:
    """Why a server cannot be started here (one line), or None when it can."""
    try:
        import psycopg  # noqa: F401 - the driver cuecard's postgres extra installs
    except ImportError:
        return "psycopg is not installed (pip install 'cuecard[postgres]')"
    if find_binaries() is None:
        return f"no PostgreSQL binaries (initdb, pg_ctl) on PATH or in {SEARCHED} (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (needed to run PostgreSQL as 'postgres')"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL server in a temporary folder; ``url`` names its database ``database``.

    Args:
        database: the database created for the tests.
        settings: extra server settings (``-c name=value``); by default durability is traded for
            speed (no fsync), which a test database does not need.
    """

    def __init__(self, database: str = "cuecard", settings: dict[str, str] | None = None) -> None:
        self.database = database
        self.settings = {
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "autovacuum": "off",
            "max_connections": "300",
            **(settings or {}),
        }
        self.bin = find_binaries()
        self.root: Path | None = None
        self.port = 0
        self.as_postgres = os.geteuid() == 0

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A server command, as the ``postgres`` user when we are root; its output is named on failure."""
        argv = [str(self.bin / command[0]), *command[1:]]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        result = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:2])} failed ({result.returncode}): {(result.stderr or result.stdout)[-1500:]}")
        return result

    def _base_folder(self) -> str | None:
        """Where the server's folder goes: a tmpfs with room when there is one (each database is about a
        thousand files, created and removed far faster in memory than on a disk), else /tmp when the
        server runs as 'postgres' (a TMPDIR may be root's own), else the default temporary folder."""
        try:
            if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free >= 1 << 30:
                return "/dev/shm"
        except OSError:
            pass
        return "/tmp" if self.as_postgres and os.path.isdir("/tmp") else None

    def start(self) -> PostgresServer:
        if self.bin is None:
            raise RuntimeError(missing_reason() or "no PostgreSQL binaries")
        self.root = Path(tempfile.mkdtemp(prefix="cuecard-pg-", dir=self._base_folder()))
        self.data.mkdir()
        if self.as_postgres:  # the server's user must own its folders (and reach them: mkdtemp is 0700)
            entry = pwd.getpwnam("postgres")
            for path in (self.root, self.data):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
        options = " ".join(
            ["-h 127.0.0.1", f"-k {self.root}", *(f"-c {name}={value}" for name, value in self.settings.items())]
        )
        for attempt in range(3):  # a free port can be taken between the probe and the start
            self.port = free_port()
            try:
                self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.root / "server.log"),
                          "-o", f"-p {self.port} {options}")
                break
            except RuntimeError:
                if attempt == 2:
                    log = self.root / "server.log"
                    raise RuntimeError(f"PostgreSQL did not start: {log.read_text()[-1500:] if log.exists() else ''}") from None
        self._create_database()
        return self

    def _create_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{self.database}"')
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
