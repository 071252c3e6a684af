"""Writing an output directory safely: checked against the inputs, assembled aside, renamed into place.

Every command that writes a directory (``refine``, ``perturb``, ``export``, ``compare --output``,
``demo``) goes through :func:`check_output_dir` before any work and :func:`atomic_directory` to write:

* paths are compared **resolved** (``..``, symbolic links and ``.`` cannot hide that an output is, holds
  or lies inside an input);
* an existing output is replaced only with ``overwrite`` and only when this package wrote it (it holds
  :data:`MARKER_FILE`);
* the content is assembled in a hidden temporary sibling and renamed into place, so the output is
  complete or absent; on any failure the temporary directory is removed and the old output is kept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional

from nerf_posefix.errors import InputError

#: Written into every directory this package creates, so ``--overwrite`` never deletes a user's data.
MARKER_FILE = ".posefix-output"


def _resolved(path: os.PathLike[str] | str) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def overlaps(a: os.PathLike[str] | str, b: os.PathLike[str] | str) -> bool:
    """Whether ``a`` and ``b`` (resolved) are the same path or one lies inside the other."""
    ra, rb = _resolved(a), _resolved(b)
    return ra == rb or ra in rb.parents or rb in ra.parents


def check_output_dir(
    output: os.PathLike[str] | str,
    inputs: Iterable[Optional[os.PathLike[str] | str | tuple[str, os.PathLike[str] | str]]] = (),
    overwrite: bool = False,
    option: str = "--output",
) -> Path:
    """Check, before anything is written, that ``output`` may be (re)written.

    ``inputs``: paths, or ``(option name, path)`` pairs named in the message.

    Raises:
        InputError: ``output`` is, contains or lies inside one of ``inputs``; it exists and ``overwrite``
            is False; it exists, ``overwrite`` is True but it was not written by this package (no
            :data:`MARKER_FILE`) or is not a directory; its parent is a file or is not writable.

    Returns:
        ``output`` as given (not resolved).
    """
    output = Path(output)
    for item in inputs:
        label, inp = item if isinstance(item, tuple) else ("", item)
        if inp is not None and os.path.lexists(inp) and overlaps(output, inp):
            what = f"the input {label} {inp}" if label else f"the input {inp}"
            raise InputError(f"{option} {output}: is, contains or lies inside {what}; choose another directory")
    if os.path.lexists(output):
        if not overwrite:
            raise InputError(f"{option} {output}: already exists (use --overwrite to replace it)")
        if not output.is_dir() or not (output / MARKER_FILE).is_file():
            raise InputError(
                f"{option} {output}: exists and was not written by posefix; --overwrite replaces only posefix outputs"
            )
    parent = _resolved(output).parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{option} {output}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{option} {output}: cannot write in {probe} (permission denied)")
    return output


@contextlib.contextmanager
def atomic_directory(output: os.PathLike[str] | str) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``output``; on normal exit it is marked
    (:data:`MARKER_FILE`) and renamed to ``output`` (an existing ``output`` is replaced), on any exception
    it is removed and ``output`` is left as it was.

    Raises:
        InputError: the parent of ``output`` cannot be created or written.
    """
    output = Path(os.path.abspath(os.fspath(output)))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    except OSError as err:
        raise InputError(f"{output}: cannot create the output directory ({err.strerror or err})") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output gets the usual permissions
    old: Optional[Path] = None
    try:
        yield tmp
        (tmp / MARKER_FILE).write_text("written by nerf-posefix\n", encoding="utf-8")
        if os.path.lexists(output):
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            os.replace(output, old / "out")
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(output) and os.path.lexists(old / "out"):
            os.replace(old / "out", output)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
