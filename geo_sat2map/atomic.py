"""Write-then-rename outputs: nothing appears at the destination unless the whole job succeeded."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from geo_sat2map.errors import UserError


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

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` is left untouched.
    """
    dest = check_output_path(path, overwrite, what)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{dest.name}.", suffix=(suffix if suffix is not None else dest.suffix) + ".part", dir=dest.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp makes it owner-only; give it the mode a plain open() would
            tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


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
