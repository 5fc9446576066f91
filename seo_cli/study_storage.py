"""Where an Optuna study lives, and how several processes share it.

``hydra.sweeper.storage`` takes one of Optuna's storages, named as Optuna's own tools name them, so the
same string works with ``optuna-dashboard``:

    sqlite:///path/optuna.db          the default, in the sweep directory: one machine
    postgresql://user@host/db         PostgreSQL (psycopg 3: pip install 'seo-cli[postgres]'); many machines
    mysql+pymysql://user@host/db      MySQL or MariaDB
    /shared/tuning/seo.log            a path ending .log: a JournalStorage file on a file system every
                                      process reaches (NFS included: its lock is a symlink, not fcntl)

Every process of a study asks for its next trial under one lock (``claim_lock``): counting the trials
and creating the next one is then a single step, so processes started together never run more than
``n_trials`` nor take the same enqueued point twice.
"""

import fcntl
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna

from seo_cli.errors import UserError

JOURNAL_SUFFIX = ".log"
FIX = (
    "use sqlite:///path/optuna.db, postgresql://user@host/database, mysql+pymysql://user@host/database "
    f"or a journal file path ending {JOURNAL_SUFFIX}"
)


def is_journal(url: str) -> bool:
    return "://" not in url and url.endswith(JOURNAL_SUFFIX)


def storage_url(url: str) -> str:
    """The storage as every process of the study is given it: a journal path made absolute, since trial
    processes and other machines do not share this one's working directory.

    Raises:
        UserError: neither a database URL nor a journal file path.
    """
    if is_journal(url):
        path = Path(url).expanduser().absolute()
        if not path.parent.is_dir():
            raise UserError(
                f"hydra.sweeper.storage={url}: the folder {path.parent} does not exist; create it on a file "
                "system that every process of the study can reach, or give another path."
            )
        return str(path)
    if "://" not in url:
        raise UserError(f"hydra.sweeper.storage={url!r} is not a storage; {FIX}.")
    return url


def shown(url: str) -> str:
    """The URL for logs and messages: a password in it is masked."""
    if is_journal(url):
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL has no password to hide
        return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's storage for ``url`` (after ``storage_url``); a database's tables are made on first use.

    Raises:
        UserError: an unknown database, a driver that is not installed, or a server that cannot be reached.
    """
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url))
    import sqlalchemy.exc

    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as err:  # Optuna's, raised from the driver's ModuleNotFoundError
        driver = getattr(err.__cause__, "name", None) or err.name or "of the URL"
        fix = {
            "psycopg": "install it: pip install 'seo-cli[postgres]'",
            # SQLAlchemy before 2.1 reads postgresql:// as psycopg2
            "psycopg2": "install it, or name psycopg 3 (the postgres extra): postgresql+psycopg://...",
        }.get(driver, "install it")
        raise UserError(
            f"hydra.sweeper.storage={shown(url)} needs the Python database driver {driver}, which is not "
            f"installed; {fix}."
        ) from None
    except sqlalchemy.exc.ArgumentError as err:  # unparsable, or a database SQLAlchemy does not know
        raise UserError(f"hydra.sweeper.storage={shown(url)} is not a storage URL ({err}); {FIX}.") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise UserError(
            f"hydra.sweeper.storage={shown(url)}: cannot open the database ({reason}); check the server is "
            "running and the URL's host, port, user and database."
        ) from None


@contextmanager
def claim_lock(url: str, storage: optuna.storages.BaseStorage, study_name: str) -> Iterator[None]:
    """Held by one process of the study at a time, for the few milliseconds of closing abandoned trials
    and asking for the next one; on every machine that shares ``url``.

    The database's own lock where it has one (a PostgreSQL advisory lock, MySQL's GET_LOCK: both end
    with the connection, so a killed process frees them); a lock file beside an SQLite database (fcntl,
    freed by a kill too) or beside a journal (a symlink, as the journal's own lock, which NFS honours;
    one left by a kill is broken after 30 s).
    """
    if is_journal(url):
        from optuna.storages.journal import JournalFileSymlinkLock

        lock = JournalFileSymlinkLock(f"{url}.claims")
        lock.acquire()
        try:
            yield
        finally:
            lock.release()
        return
    assert isinstance(storage, optuna.storages.RDBStorage)
    backend = storage.engine.url.get_backend_name()
    if backend == "sqlite":
        database = storage.engine.url.database
        if not database or database == ":memory:":  # one process only
            yield
            return
        fd = os.open(f"{database}.claims.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
        return
    from sqlalchemy import text

    key = zlib.crc32(f"seo-cli study {study_name}".encode())
    if backend == "postgresql":
        take, give = (
            "SELECT pg_advisory_lock(CAST(:key AS bigint))",
            "SELECT pg_advisory_unlock(CAST(:key AS bigint))",
        )
    elif backend in ("mysql", "mariadb"):
        take, give = (
            "SELECT GET_LOCK(CONCAT('seo-cli-', :key), -1)",
            "SELECT RELEASE_LOCK(CONCAT('seo-cli-', :key))",
        )
    else:
        raise UserError(
            f"hydra.sweeper.storage={shown(url)}: processes cannot share a study on {backend}, which has no "
            "lock seo-cli knows; use PostgreSQL, MySQL, SQLite or a journal file."
        )
    with storage.engine.connect() as connection:
        connection.execute(text(take), {"key": key})
        try:
            yield
        finally:
            connection.execute(text(give), {"key": key})
