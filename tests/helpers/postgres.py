"""A throw-away PostgreSQL server for a test: initdb in a temporary folder, pg_ctl start on a unix socket
there (no TCP port to collide with), stopped and deleted afterwards.

PostgreSQL refuses to run as root, and CI runs the tests as root: then the server runs as ``nobody``
(setpriv), in a folder that user owns.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# apt's postgresql-NN packages put the server binaries here; not on PATH.
BIN_GLOB = "/usr/lib/postgresql/*/bin"


def server_bin() -> Path | None:
    """The newest installed server's bin folder (initdb, pg_ctl), or None."""
    found = [
        Path(d)
        for d in glob.glob(BIN_GLOB)
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file()
    ]
    return max(found, key=lambda d: float(d.parent.name), default=None) if found else None


def missing() -> str | None:
    """Why no server can be started here, or None."""
    if server_bin() is None:
        return (
            f"no PostgreSQL server binaries (initdb, pg_ctl) under {BIN_GLOB}; .ci/run installs postgresql "
            "with apt-get where it can"
        )
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if shutil.which("setpriv") is None:
            return "running as root, without setpriv (util-linux) to start PostgreSQL as an unprivileged user"
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            return "running as root, and there is no user 'nobody' to start PostgreSQL as"
    return None


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a SQLAlchemy URL of a fresh, empty server (database ``postgres``, user ``seo``, no password)."""
    bin_dir = server_bin()
    assert bin_dir is not None, "call missing() first and skip with its reason"
    root = Path(tempfile.mkdtemp(prefix="seo-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        as_user = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    data, log = root / "data", root / "server.log"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}

    def run(*argv: str) -> None:
        subprocess.run([*as_user, *argv], check=True, capture_output=True, env=env, cwd=root)

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "seo", "--auth=trust", "--no-sync", "-E", "UTF8")
        # Only the socket in `root`; durability off: a test's database lives for seconds.
        options = (
            f"-c listen_addresses='' -k {root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        run(
            str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"
        )
        yield f"postgresql+psycopg://seo@/postgres?host={root}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                env=env,
                cwd=root,
            )
        shutil.rmtree(root, ignore_errors=True)
