"""Writing output files: atomically (temp file, fsync, rename), with the umask's mode, and a failed write
as one sentence naming the file and the cause.

A kill at any moment leaves the previous complete file (or none) under the name, never a partial one;
a full disk or a read-only folder is a ``UserError``, not a traceback. A symlink at the name is
replaced by the new file, never written through: ``output=scores.csv`` cannot overwrite the file a
planted ``scores.csv -> ~/.bashrc`` points at.
"""

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from seo_cli.errors import UserError


def current_umask() -> int:
    """The process's umask, read without changing it.

    ``os.umask`` is read only by setting it, and for that instant every thread (DataLoader workers,
    TensorBoard's writer) creates files under the placeholder mask. Linux reports the mask in
    /proc/self/status (since 4.7); elsewhere set-and-restore is the only way.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 less the umask (mkstemp's is 0o600)."""
    return 0o666 & ~current_umask()


def write_error(path: Path, err: OSError) -> UserError:
    """One sentence for a failed write of ``path``: the cause in the OS's words, and what to do."""
    path = Path(path)
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # mkdir's "File exists" or "Not a directory" would hide which part
        return UserError(f"cannot write {path}: {blocker} is a file, not a folder; give another path.")
    fixes = {
        errno.ENOSPC: "free space on its disk and run again",
        errno.EDQUOT: "free space within your disk quota and run again",
        errno.EROFS: "write to a folder on a writable file system",
        errno.EACCES: f"make {path.parent} writable, or write to another folder",
        errno.EPERM: f"make {path.parent} writable, or write to another folder",
    }
    fix = fixes.get(err.errno, f"check {path.parent} and its disk")
    return UserError(f"cannot write {path}: {err.strerror or err}; {fix}.")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp file beside ``path`` to write to; then fsync it and rename it over ``path``.

    Raises:
        UserError: the folder cannot be made, or writing, syncing or renaming fails (``write_error``).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        try:
            os.fchmod(fd, file_mode())
        finally:
            os.close(fd)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a symlink itself, not its target
        tmp = None
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable. Best effort: some file systems refuse fsync on a folder,
    and the file itself is complete either way."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see ``atomic_path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; see ``atomic_path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


class OutputDirCheck(Callback):
    """A Hydra callback: make the run's (or sweep's) folder and its ``.hydra/`` before Hydra writes its
    config files there, so that a folder that cannot be written is one sentence and exit 1, where Hydra
    would print a traceback. Registered under ``hydra.callbacks`` in the primary configs."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_dir(Path(config.hydra.run.dir), config.hydra.output_subdir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_dir(Path(config.hydra.sweep.dir), None)


def check_output_dir(folder: Path, subdir: str | None) -> None:
    """Make ``folder/subdir`` and write (and sync) a few KB there, as Hydra's config files will.

    Raises:
        SystemExit: with one sentence naming the file Hydra would write first; SystemExit rather than
            UserError because Hydra has not set up logging yet and prints a traceback for exceptions.
    """
    target = folder / subdir if subdir else folder
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target) as probe:
            probe.write(bytes(4096))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise SystemExit(str(write_error(target / "config.yaml", err))) from None
