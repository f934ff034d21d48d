"""Write-then-rename outputs: nothing appears at the destination unless the whole job succeeded."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from geo_sat2map.errors import UserError

log = logging.getLogger("geo_sat2map")


def check_output_path(path: str | os.PathLike[str], overwrite: bool, what: str = "output") -> Path:
    """Refuse an existing output without ``overwrite`` and a missing or read-only destination folder."""
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise UserError(f"{what} {dest} already exists; pass --overwrite to replace it")
    if dest.is_dir():
        raise UserError(f"{what} {dest} is a directory; give a file path")
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} folder {folder} is not writable")
    return dest


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], overwrite: bool = False, suffix: str | None = None, what: str = "output"
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any exception (Ctrl-C, SIGTERM included) the temporary file is removed and ``path`` is left untouched.
    The temporary name carries this process's owner tag, and files a killed run left for ``path`` are removed
    first (``remove_leftovers``).
    """
    dest = check_output_path(path, overwrite, what)
    remove_leftovers(dest)
    tmp = temp_file_beside(dest, suffix if suffix is not None else dest.suffix)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp makes it owner-only; give it the mode a plain open() would
            tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def temp_file_beside(dest: Path, suffix: str) -> Path:
    """A new empty temporary file in ``dest``'s folder, named with the owner tag (``temp_prefix``) and ending in
    ``suffix + ".part"``: what a killed run leaves there is recognised and removed by the next one."""
    fd, name = tempfile.mkstemp(prefix=temp_prefix(dest), suffix=f"{suffix}.part", dir=dest.parent)
    os.close(fd)
    return Path(name)


def owner_tag() -> str:
    """``pid<PID>-<host>``: which process on which machine a temporary file belongs to (host: the first label
    of the host name, letters, digits and '-' only, so the tag never contains a dot)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32] or "host"
    return f"pid{os.getpid()}-{host}"


def temp_prefix(dest: Path) -> str:
    """The start of every hidden temporary name written for ``dest``: ``.<name>.<owner tag>.``. Helpers that
    derive their own temporary files from such a path (the COG writer's ``..<name>.<tag>...level0.tiles``) keep
    the tag, so ``remove_leftovers`` finds them too."""
    return f".{dest.name}.{owner_tag()}."


def remove_leftovers(dest: Path) -> list[Path]:
    """Remove the hidden temporary files that a killed run (SIGKILL, power loss) left while writing ``dest``.

    A file counts as a leftover when its name starts with ``.<name>.`` or ``..<name>.`` followed by an owner
    tag of this machine whose process is gone: files of a live run, of another machine (shared file systems)
    or without a tag are never touched. Returns the files removed."""
    pattern = re.compile(r"\.\.?" + re.escape(dest.name) + r"\.pid(\d+)-([A-Za-z0-9-]+)\.")
    here = owner_tag().partition("-")[2]
    removed = []
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or match.group(2) != here or pid_alive(int(match.group(1))):
            continue
        leftover = Path(entry.path)
        log.info("removing %s, left by an interrupted run (process %s is gone)", leftover, match.group(1))
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        removed.append(leftover)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (ours is always alive; when unsure, say alive)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def swap_folder(new: Path, dest: Path, aside: Path) -> bool:
    """Rename the folder ``new`` to ``dest``; returns whether a previous ``dest`` was replaced.

    A previous ``dest`` is renamed to ``aside`` first and put back if the second rename fails, so ``dest`` is never
    missing or half-replaced; ``aside`` is removed at the end.
    """
    if not dest.exists():
        os.replace(new, dest)
        return False
    os.replace(dest, aside)
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(aside, dest)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
