"""Writing a folder of files without losing what is there.

A bundle folder is the user's too: they put notes and plots beside the bundle, save over an
older bundle, or point ``--out`` somewhere by mistake. The rules, in one place:

- :func:`check_target` refuses a target that a save would lose data in (a symbolic link, a
  file, a folder that holds files but no bundle, the current folder or one above it), before
  any work is done.
- :func:`install` puts a staged folder's files in place. Into a new folder: one rename. Into an
  existing one: file by file (``os.replace``, atomic each), the old files kept (hard links, or
  copies) until every new one is in place, rolled back if one fails. Files it does not own are
  never touched, moved or deleted.
- New folders and files follow the umask (``os.mkdir``, ``open``), never a fixed 0700.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

from tracker_sched.errors import BundleError

STAGING_PREFIX = ".tracker-sched-"


def check_target(path: str | os.PathLike[str], *, marker: str, what: str = "") -> Path:
    """Refuse a folder target that writing ``marker`` and its siblings into would lose data.

    ``marker`` names the file that says the folder is ours (``bundle.json``); ``what`` prefixes
    the message (``--out``). Returns the path. Raises :class:`BundleError`.
    """
    dest = Path(path)
    label = f"{what} {path}".strip()
    if dest.is_symlink():
        raise BundleError(f"{label} is a symbolic link (to {os.readlink(dest)}); give the folder "
                          "itself, not a link to it")
    try:
        resolved, cwd = dest.resolve(), Path.cwd().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop above it, a vanished cwd
        raise BundleError(f"{label}: cannot resolve the path ({exc})") from exc
    if resolved == cwd or resolved in cwd.parents:
        raise BundleError(f"{label} is the current folder or a folder above it; give a folder "
                          f"of its own, e.g. {Path(path) / 'bundle'}")
    if dest.exists() and not dest.is_dir():
        raise BundleError(f"{label} is a file; give a folder path for the bundle")
    if dest.is_dir() and not (dest / marker).is_file():
        held = [p.name for p in dest.iterdir() if not p.name.startswith(STAGING_PREFIX)]
        if held:
            raise BundleError(f"{label} holds files ({', '.join(sorted(held)[:3])}"
                              f"{', ...' if len(held) > 3 else ''}) but is not a bundle (no "
                              f"{marker}); give a new or empty folder")
    return dest


def staging_dir(dest: Path) -> Path:
    """A new hidden folder beside ``dest`` (same file system, so renames are atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = dest.parent / f"{STAGING_PREFIX}{dest.name}-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp)  # the umask applies, unlike tempfile.mkdtemp's 0700
        except FileExistsError:
            continue
        return tmp
    raise BundleError(f"cannot create a staging folder beside {dest}")  # pragma: no cover


def install(staged: Path, dest: Path, owned: Sequence[str]) -> None:
    """Move ``staged``'s files into ``dest``; remove ``owned`` files that ``staged`` lacks.

    ``staged`` must hold only files named in ``owned``. On failure the old files are back in
    place (or, if even that fails, kept in a folder the error names) and the error is raised.
    """
    if not dest.exists():
        os.rename(staged, dest)
        return
    names = [n for n in owned if (staged / n).exists()]
    old = [n for n in owned if (dest / n).exists()]
    backup = dest / f"{STAGING_PREFIX}old-{secrets.token_hex(4)}"
    os.mkdir(backup)
    for n in old:
        _keep(dest / n, backup / n)
    done: list[str] = []
    try:
        for n in names:  # the caller orders them: the file that marks the folder comes last
            os.replace(staged / n, dest / n)
            done.append(n)
        for n in old:
            if n not in names:
                os.remove(dest / n)  # a stale file of the old bundle (it is in the backup)
    except OSError as exc:
        _roll_back(backup, dest, old, done, exc)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(staged)


def _keep(src: Path, dst: Path) -> None:
    """A second name for the old file (hard link), else a copy: the original stays in place."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP,
                             errno.EOPNOTSUPP):
            raise
        shutil.copy2(src, dst)


def _roll_back(backup: Path, dest: Path, old: Sequence[str], done: Sequence[str],
               cause: OSError) -> None:
    try:
        for n in old:
            if not (dest / n).exists() or n in done:
                os.replace(backup / n, dest / n)
        for n in done:
            if n not in old:
                os.remove(dest / n)
    except OSError as exc:
        raise BundleError(f"could not write {dest} ({cause}), nor put the old files back "
                          f"({exc}): they are kept in {backup}") from cause
    shutil.rmtree(backup, ignore_errors=True)
