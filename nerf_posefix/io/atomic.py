"""Writing outputs safely: checked against the inputs before any work, assembled aside, renamed into place.

Every command that writes a directory (``refine``, ``perturb``, ``export``, ``compare --output`` /
``--export-tum``, ``demo``) goes through :func:`check_output_dir` before any work and
:func:`atomic_directory` to write; a single output file (``compare --json``) through
:func:`check_output_file` and :func:`atomic_file`:

* paths are compared **resolved** (``..``, symbolic links and ``.`` cannot hide that an output is, holds
  or lies inside an input), with or without ``--overwrite``;
* an existing output directory is replaced only with ``overwrite`` and only when this package wrote it
  (it holds :data:`MARKER_FILE`); the current directory (or one holding it) is never an output;
* the parent must be writable (checked up front: permissions, read-only file systems, a regular file in
  the way), so these failures are one line before anything is computed;
* the content is assembled in a hidden temporary sibling and renamed into place, so the output is
  complete or absent; on any failure the temporary directory is removed and the old output is kept,
  and an :class:`OSError` while writing becomes one :class:`~nerf_posefix.errors.InputError` naming the
  output and the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

from nerf_posefix.errors import InputError

#: Written into every directory this package creates, so ``--overwrite`` never deletes a user's data.
MARKER_FILE = ".posefix-output"


def _resolved(path: os.PathLike[str] | str) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def os_reason(err: OSError) -> str:
    """``"PATH: reason"`` of an :class:`OSError` (``strerror`` and the file it names, when it names one;
    the first failure of a :class:`shutil.Error`)."""
    if isinstance(err, shutil.Error) and err.args and isinstance(err.args[0], list) and err.args[0]:
        first = err.args[0][0]
        if isinstance(first, tuple) and len(first) == 3:
            return f"{first[0]}: {first[2]}" + (f" (and {len(err.args[0]) - 1} more)" if len(err.args[0]) > 1 else "")
    reason = err.strerror or str(err) or type(err).__name__
    return f"{err.filename}: {reason}" if err.filename else reason


def overlaps(a: os.PathLike[str] | str, b: os.PathLike[str] | str) -> bool:
    """Whether ``a`` and ``b`` (resolved) are the same path or one lies inside the other."""
    ra, rb = _resolved(a), _resolved(b)
    return ra == rb or ra in rb.parents or rb in ra.parents


def _writable(directory: Path) -> bool:
    """Whether this process may create entries in ``directory`` (effective ids; read-only mounts count)."""
    if os.access in os.supports_effective_ids:
        return os.access(directory, os.W_OK | os.X_OK, effective_ids=True)
    return os.access(directory, os.W_OK | os.X_OK)


def _check_inputs(output: Path, inputs: Iterable[Any], option: str) -> None:
    for item in inputs:
        label, inp = item if isinstance(item, tuple) else ("", item)
        if inp is not None and os.path.lexists(inp) and overlaps(output, inp):
            what = f"the input {label} {inp}" if label else f"the input {inp}"
            raise InputError(f"{option} {output}: is, contains or lies inside {what}; choose another path")


def _check_parent(output: Path, option: str) -> None:
    """The first existing ancestor of ``output`` must be a directory this process can write in."""
    probe = _resolved(output).parent
    try:
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise InputError(f"{option} {output}: {probe} is a file, not a directory")
    except OSError as err:  # e.g. an ancestor that cannot be searched
        raise InputError(f"{option} {output}: cannot check its parent directory ({os_reason(err)})") from None
    if not _writable(probe):
        raise InputError(f"{option} {output}: cannot write in {probe} (permission denied or read-only file system)")


def check_output_dir(
    output: os.PathLike[str] | str,
    inputs: Iterable[Optional[os.PathLike[str] | str | tuple[str, os.PathLike[str] | str]]] = (),
    overwrite: bool = False,
    option: str = "--output",
) -> Path:
    """Check, before anything is written, that ``output`` may be (re)written.

    ``inputs``: paths, or ``(option name, path)`` pairs named in the message.

    Raises:
        InputError: ``output`` is, contains or lies inside one of ``inputs``; it is the current
            directory or holds it (replacing it would leave the shell in a deleted directory); it exists
            and ``overwrite`` is False; it exists, ``overwrite`` is True but it was not written by this
            package (no :data:`MARKER_FILE`) or is not a directory; its first existing ancestor is a
            file or is not writable (permissions, read-only file system).

    Returns:
        ``output`` as given (not resolved).
    """
    output = Path(output)
    _check_inputs(output, inputs, option)
    try:
        cwd = Path(os.getcwd()).resolve()
    except OSError:  # the current directory was deleted
        cwd = None
    if cwd is not None and (_resolved(output) == cwd or _resolved(output) in cwd.parents):
        raise InputError(
            f"{option} {output}: is the current directory or holds it; posefix writes its output as a new "
            "directory (it would replace this one as a whole): name another directory"
        )
    try:
        exists = os.path.lexists(output)
        if exists:
            if not overwrite:
                raise InputError(f"{option} {output}: already exists (use --overwrite to replace it)")
            if not output.is_dir() or not (output / MARKER_FILE).is_file():
                raise InputError(
                    f"{option} {output}: exists and was not written by posefix; --overwrite replaces only posefix outputs"
                )
    except OSError as err:
        raise InputError(f"{option} {output}: cannot check it ({os_reason(err)})") from None
    _check_parent(output, option)
    return output


def check_output_file(
    path: os.PathLike[str] | str,
    inputs: Iterable[Optional[os.PathLike[str] | str | tuple[str, os.PathLike[str] | str]]] = (),
    option: str = "--json",
    replaceable: Optional[Callable[[Path], bool]] = None,
) -> Path:
    """Check, before anything is computed, that the file ``path`` may be written.

    Raises:
        InputError: ``path`` is or lies inside one of ``inputs``; it is a directory; it exists and
            ``replaceable(path)`` is not True (default: an existing file is never replaced); its first
            existing ancestor is a file or is not writable.
    """
    path = Path(path)
    _check_inputs(path, inputs, option)
    try:
        if path.is_dir():
            raise InputError(f"{option} {path}: is a directory; give a file name")
        if os.path.lexists(path) and not (replaceable is not None and path.is_file() and replaceable(path)):
            raise InputError(f"{option} {path}: already exists and was not written by posefix; choose another file")
    except OSError as err:
        raise InputError(f"{option} {path}: cannot check it ({os_reason(err)})") from None
    _check_parent(path, option)
    return path


@contextlib.contextmanager
def atomic_file(path: os.PathLike[str] | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it is renamed to ``path`` (replacing it),
    on any exception it is removed and ``path`` is left as it was.

    Raises:
        InputError: any :class:`OSError` while writing, naming ``path`` and the reason.
    """
    path = Path(os.path.abspath(os.fspath(path)))
    tmp: Optional[Path] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield tmp
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise InputError(f"{path}: cannot write it ({os_reason(err)})") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_directory(output: os.PathLike[str] | str) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``output``; on normal exit it is marked
    (:data:`MARKER_FILE`) and renamed to ``output`` (an existing ``output`` is replaced), on any exception
    it is removed and ``output`` is left as it was.

    Raises:
        InputError: the parent of ``output`` cannot be created or written, or any :class:`OSError` while
            the content is written (disk full, permissions, ...), naming ``output`` and the reason.
    """
    output = Path(os.path.abspath(os.fspath(output)))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    except OSError as err:
        raise InputError(f"{output}: cannot create the output directory ({os_reason(err)})") from None
    old: Optional[Path] = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output gets the usual permissions
        yield tmp
        (tmp / MARKER_FILE).write_text("written by nerf-posefix\n", encoding="utf-8")
        if os.path.lexists(output):
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            os.replace(output, old / "out")
        os.replace(tmp, output)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(output) and os.path.lexists(old / "out"):
            os.replace(old / "out", output)
        if isinstance(exc, OSError):
            raise InputError(f"{output}: cannot write the output ({os_reason(exc)}); nothing was written") from None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
