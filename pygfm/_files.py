"""File plumbing shared by every writer in pygfm: atomic writes, the names of
their temporaries, and the checks that keep a writer from deleting what it did
not make.

Atomic write: the content goes to a temporary beside the target, named
``.NAME.tmp-<hex>SUFFIX`` (the target's own suffix kept, so tools that choose
a format from the extension, such as matplotlib and ADIOS2, still work), is
fsynced, renamed onto the target with :func:`os.replace` (atomic within one
filesystem) and the folder is fsynced, so that after a crash or a power cut
the target holds either the old content or the new, never a mix. A failure
removes the temporary; a SIGKILL cannot, and :func:`remove_stale_temporaries`
clears those on the next run.

An ``OSError`` while writing comes out as :class:`FileWriteError`: an
``OSError`` with the errno and the target's name kept, whose message is one
line, e.g. ``cannot write runs/x/last.pt: No space left on device``.
"""

from __future__ import annotations

import errno as errno_codes
import fnmatch
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

__all__ = ["FileWriteError", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "atomic_output", "replace_path", "temporary_path", "is_temporary",
           "remove_stale_temporaries", "check_folder_is_ours", "check_not_an_input",
           "starts_with_line"]

# .NAME.tmp-HEX with NAME's suffix or none (older pygfm wrote .NAME.tmp-<pid>)
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]+(?P<suffix>\.[^.]*)?$")


class FileWriteError(OSError):
    """Writing ``filename`` failed; ``errno`` and ``strerror`` are those of the cause."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def _named(error: OSError, path: Path, temporary: Path) -> OSError:
    """``error`` as a FileWriteError naming ``path``, when it is about ``path`` or its
    temporary (an error about another file is left as it is)."""
    if isinstance(error, FileWriteError):
        return error
    if error.filename not in (None, str(path), str(temporary), path, temporary):
        return error
    reason = error.strerror or str(error) or type(error).__name__
    return FileWriteError(error.errno if error.errno is not None else errno_codes.EIO,
                          reason, str(path))


def temporary_path(path) -> Path:
    """A fresh temporary name beside ``path``: ``.NAME.tmp-<hex>SUFFIX``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}{path.suffix}")


def is_temporary(entry: str, name: str) -> bool:
    """Whether the file name ``entry`` is one of our temporaries of a target whose
    name matches ``name`` (a file name, or a glob pattern such as ``chunk-*.npz``)."""
    match = _TEMPORARY.match(entry)
    if match is None:
        return False
    target = match.group("name")
    suffix = match.group("suffix")
    if suffix is not None and suffix != Path(target).suffix:
        return False
    return fnmatch.fnmatchcase(target, name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def remove_stale_temporaries(folder, name: str) -> list[Path]:
    """Remove the temporaries of ``name`` (see :func:`is_temporary`) that a killed
    writer left in ``folder``, and nothing else; returns what was removed. Call it
    only where no other process is writing ``name`` at the same time."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [folder / entry for entry in sorted(os.listdir(folder))
               if is_temporary(entry, name)]
    for path in removed:
        _remove(path)
    return removed


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file and directory of a directory tree."""
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
    _fsync(path)


def _fsync(path: Path) -> None:
    """fsync one file or directory (not what a directory holds)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        descriptor = os.open(path, flags)
    except IsADirectoryError:  # Windows: directories cannot be opened
        return
    try:
        os.fsync(descriptor)
    except OSError as error:
        # some filesystems cannot fsync a directory; the files were synced
        if not (path.is_dir() and error.errno in (errno_codes.EINVAL, errno_codes.ENOTSUP,
                                                  errno_codes.EBADF)):
            raise
    finally:
        os.close(descriptor)


def replace_path(source, target) -> None:
    """Move ``source`` (a file or a directory) onto ``target``. A directory onto an
    existing directory: the old one is renamed aside and removed only once
    ``source`` is in place, so a failure leaves it intact. A file never replaces a
    directory, nor a directory a file (os.replace refuses). The caller decides that
    ``target`` may be replaced."""
    source, target = Path(source), Path(target)
    if not (source.is_dir() and target.is_dir()):
        os.replace(source, target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
    os.replace(target, old)
    try:
        os.replace(source, target)
    except BaseException:
        os.replace(old, target)
        raise
    _remove(old)


@contextmanager
def atomic_output(path):
    """``with atomic_output(path) as tmp: write(tmp)``: the writer fills the temporary
    path ``tmp`` (a file, or a directory such as an ADIOS2 ``.bp``) in the same
    folder; on success it is fsynced and replaces ``path``, on any failure it is
    removed and ``path`` is left as it was. OSErrors name ``path``."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        _fsync_tree(tmp)
        replace_path(tmp, path)
        _fsync(path.parent)
    except OSError as error:
        _remove(tmp)
        raise _named(error, path, tmp) from error
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module); returns the path."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return Path(path)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path, content, indent: int = 1) -> Path:
    """Write ``content`` as JSON (UTF-8, not ASCII-escaped, a final newline) atomically."""
    return atomic_write_text(path, json.dumps(content, indent=indent, ensure_ascii=False) + "\n")


def _listing(names) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def starts_with_line(path, line: str) -> bool:
    """Whether the text file ``path`` exists and its first line is ``line`` (the
    header by which pygfm recognises the run and search folders it wrote)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline() == line
    except (OSError, UnicodeDecodeError):
        return False


def check_folder_is_ours(folder, is_ours, *, option: str, tool: str) -> None:
    """Refuse (FileExistsError) to write a new run into ``folder`` when it is a file,
    or a directory that holds something and that ``is_ours(folder)`` does not
    recognise as one of ``tool``'s own: a run never writes over files it did not
    make. An absent or empty directory is fine."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{option} {folder}: is a file, not a directory; choose another "
                              f"{option}")
    if not folder.is_dir():
        return
    entries = os.listdir(folder)
    if entries and not is_ours(folder):
        raise FileExistsError(
            f"{option} {folder}: holds files that {tool} did not write ({_listing(entries)}); "
            f"{tool} writes a new run only into a new or empty directory or one of its own "
            f"runs, so as not to overwrite them: choose another {option}")


def check_not_an_input(output, inputs, *, option: str) -> None:
    """Refuse (FileExistsError) an ``output`` that is one of ``inputs`` or holds one:
    replacing it would delete what is being read."""
    resolved = Path(output).resolve()
    for source in inputs:
        source_path = Path(source).resolve()
        if source_path == resolved or resolved in source_path.parents:
            what = "is" if source_path == resolved else "holds"
            raise FileExistsError(f"{option} {output}: {what} the input {source}; replacing it "
                                  "would delete what is being read: choose another output")
