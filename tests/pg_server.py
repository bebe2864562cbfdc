"""A real PostgreSQL server for the tests: Debian's `postgresql`, in a temporary directory on a free port.

`initdb` and `pg_ctl` refuse to run as root, so as root they run as `nobody` (in a directory it owns); as any
other user, as that user. The server listens on 127.0.0.1 only, with trust authentication for the user `mr`
(a test server: nothing else can reach it). Each test gets a database of its own (`fresh_url`).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from system_packages import apt_install

from serving.ops.ports import free_port

USER = "mr"


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian keeps them under /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def install() -> str | None:
    """None when PostgreSQL's server programs are usable (installed now if need be); else the reason not."""
    return apt_install(["postgresql"], lambda: bin_dir() is not None)


class PostgresServer:
    """One PostgreSQL server, started by `start()` and stopped (its directory removed) by `stop()`."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed")
        self.root = Path(tempfile.mkdtemp(prefix="mr-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_root = os.geteuid() == 0

    def _run(self, args: Sequence[str], timeout: float = 120) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._as_root:  # PostgreSQL will not run as root
            command = ["runuser", "-u", "nobody", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    def start(self) -> PostgresServer:
        if self._as_root:
            shutil.chown(self.root, "nobody", "nogroup")
        self._run(["initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C.UTF-8"])
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server (again, after `pause`), on the same port with the same data."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(["pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"])

    def pause(self) -> None:
        """Stop the server at once (every connection is cut), keeping its data for `resume`."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"], timeout=60)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def fresh_url(self) -> str:
        """A new empty database's URL."""
        import sqlalchemy as sa

        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.url().replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        try:
            self.pause()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
