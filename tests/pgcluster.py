"""A throwaway PostgreSQL cluster for tests and benches: own data dir, own socket dir, no TCP.

``PgCluster.start()`` runs Debian's ``initdb`` and ``pg_ctl`` (``make setup`` installs the
``postgresql`` package) into a fresh directory under /tmp and serves on a unix socket only
(``listen_addresses=''``), so no port on the machine is ever taken and parallel runs never
meet; the "port" only names the socket file. PostgreSQL refuses to run as root, so under
root the cluster runs as ``nobody`` in a directory it owns (under /tmp, not ``$TMPDIR``:
CI may point that at a 0700 root directory nobody cannot enter). ``stop()`` stops it and
deletes the directory. Each test gets its own database (``create_database``).
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg  # noqa: TID251 - a test helper administering its own cluster

RUN_AS = "nobody"
SETUP_HINT = "run `make setup` (as root it installs Debian's postgresql package)"


def find_bin_dir() -> Path:
    """The newest PostgreSQL server bin dir (Debian keeps them off PATH)."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name)
                  if Path(d).parent.name.isdigit() else 0)
    for d in reversed(dirs):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise RuntimeError(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {SETUP_HINT}")


class PgCluster:
    def __init__(self, root: Path, bin_dir: Path, port: int, user: str | None) -> None:
        self.root, self.bin_dir, self.port, self.user = root, bin_dir, port, user
        self.data = root / "data"
        self.logfile = root / "postgres.log"

    @classmethod
    def start(cls, fsync: bool = False) -> PgCluster:
        bin_dir = find_bin_dir()
        user = RUN_AS if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="forge-pg-", dir="/tmp" if user else None))
        if user:
            pw = pwd.getpwnam(user)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o755)  # the socket lives here; clients of any uid must reach it
        cluster = cls(root, bin_dir, random.randint(20_000, 60_000), user)
        try:
            cluster._run("initdb", "-D", str(cluster.data), "-U", "forge", "--auth=trust", "-E", "UTF8",
                         "--no-sync", "--no-instructions")
            settings = [
                "listen_addresses=''", f"unix_socket_directories='{root}'", f"port={cluster.port}",
                f"fsync={'on' if fsync else 'off'}", "full_page_writes=off", "max_connections=300",
                "shared_buffers=32MB", "log_min_messages=warning",
            ]
            with (cluster.data / "postgresql.auto.conf").open("a") as conf:
                conf.write("".join(f"{s}\n" for s in settings))
            cluster.pg_ctl("start")
        except BaseException:
            cluster.remove()
            raise
        return cluster

    def _run(self, tool: str, *args: str) -> None:
        kwargs: dict[str, Any] = {"user": self.user, "group": "nogroup"} if self.user else {}
        r = subprocess.run([str(self.bin_dir / tool), *args], cwd=self.root, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "LC_ALL": "C.UTF-8"}, **kwargs)
        if r.returncode != 0:
            log = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args[:1])} failed ({r.returncode}): {r.stderr.strip()}\n{log}")

    def pg_ctl(self, action: str, *extra: str) -> None:
        """``start``, ``stop`` or ``restart`` (fast shutdown), waiting until done."""
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60",
                  *(["-m", "fast"] if action != "start" else []), *extra)

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        auth = f"forge:{password}" if password else "forge"
        return f"postgresql://{auth}@/{database}?host={self.root}&port={self.port}"

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())

    def stop(self) -> None:
        try:
            self.pg_ctl("stop")
        finally:
            self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
