"""Writing outputs safely: checked against the inputs before any work, assembled aside, renamed into place.

Every command that writes a directory (``refine``, ``perturb``, ``export``, ``compare --output`` /
``--export-tum``, ``demo``, ``evaluate``) goes through :func:`check_output_dir` before any work and
:func:`atomic_directory` to write, both given its name (``command=``; ``demo`` and ``evaluate``, which
fill their output as they go, write :func:`marker_text` of their name themselves); a single output file
(``compare --json``) through :func:`check_output_file` and :func:`atomic_file`:

* paths are compared **resolved** (``..``, symbolic links and ``.`` cannot hide that an output is, holds
  or lies inside an input), with or without ``--overwrite``;
* an existing output directory is replaced only with ``overwrite`` and only when this package wrote it
  (it holds :data:`MARKER_FILE`); the current directory (or one holding it) is never an output;
* the parent must be writable (checked up front: permissions, read-only file systems, a regular file in
  the way), so these failures are one line before anything is computed;
* the content is assembled in a hidden temporary sibling and renamed into place, so the output is
  complete or absent; on any failure the temporary directory is removed and the old output is kept,
  and an :class:`OSError` while writing becomes one :class:`~nerf_posefix.errors.InputError` naming the
  output and the reason;
* :data:`MARKER_FILE` names the command that wrote the output (:func:`output_command`), and ``--overwrite``
  replaces only that command's own outputs (``check_output_dir(..., command=...)``, the one place this rule
  is decided): another command's output is refused in one line naming the command that wrote it;
* a work directory (``posefix refine``'s ``OUT.partial``) is used by one run at a time: :func:`lock_directory`
  takes an exclusive lock on it (a ``flock``-ed :data:`LOCK_FILE` holding the owner's pid and host, taken
  atomically; the lock of a dead process is stale), so a second run on the same output is refused in one
  line and ``--overwrite`` never removes a live run's directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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
    try:
        fs = os.statvfs(probe)
    except OSError:
        return
    if fs.f_blocks == 0 and fs.f_files == 0:  # /proc, /sys: virtual file systems that hold no files of ours
        raise InputError(f"{option} {output}: cannot create it: {probe} is a virtual file system (like /proc or /sys), which holds no files")


def check_output_dir(
    output: os.PathLike[str] | str,
    inputs: Iterable[Optional[os.PathLike[str] | str | tuple[str, os.PathLike[str] | str]]] = (),
    overwrite: bool = False,
    option: str = "--output",
    command: Optional[str] = None,
) -> Path:
    """Check, before anything is written, that ``output`` may be (re)written.

    ``inputs``: paths, or ``(option name, path)`` pairs named in the message. ``command``: the ``posefix``
    command that will write it; with ``overwrite``, an existing output is replaced only when that command
    wrote it (:func:`output_command`; an output whose command is unknown is replaced).

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
            wrote = output_command(output) if command is not None else None
            if wrote is not None and wrote != command:
                raise InputError(
                    f"{option} {output}: was written by posefix {wrote}; --overwrite replaces only an earlier posefix "
                    f"{command} output: choose another directory"
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
def atomic_directory(output: os.PathLike[str] | str, command: Optional[str] = None) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``output``; on normal exit it is marked
    (:data:`MARKER_FILE`, naming ``command`` when given) and renamed to ``output`` (an existing ``output``
    is replaced), on any exception it is removed and ``output`` is left as it was.

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
        (tmp / MARKER_FILE).write_text(marker_text(command), encoding="utf-8")
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


# ---------------------------------------------------------------------------------------------
# what wrote an output directory


#: The commands whose outputs carry :data:`MARKER_FILE`, and a file only that command's output holds
#: (outputs marked before the marker named its command are recognised by it).
_OUTPUT_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("refine", "report.json"),
    ("compare", "compare.json"),
    ("perturb", "transforms_gt.json"),
    ("evaluate", "evaluation_options.json"),
    ("demo", "summary.json"),
)


def marker_text(command: Optional[str] = None) -> str:
    """The content of :data:`MARKER_FILE` for an output of ``posefix COMMAND`` (None: unnamed)."""
    return f"written by nerf-posefix {command}\n" if command else "written by nerf-posefix\n"


def output_command(directory: os.PathLike[str] | str) -> Optional[str]:
    """Which ``posefix`` command wrote the output ``directory`` (its :data:`MARKER_FILE` names it; an
    older marker that does not is recognised by the files only that command writes), or None when
    unknown or not a posefix output."""
    directory = Path(directory)
    try:
        text = (directory / MARKER_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    words = text.split()
    if len(words) >= 4 and words[:3] == ["written", "by", "nerf-posefix"]:
        return words[3]
    for command, signature in _OUTPUT_SIGNATURES:
        if (directory / signature).is_file():
            return command
    try:
        import json

        meta = json.loads((directory / "transforms.json").read_text(encoding="utf-8"))
        if isinstance(meta, dict) and isinstance(meta.get("posefix"), dict) and "run" in meta["posefix"]:
            return "export"
    except (OSError, ValueError):
        pass
    return None


# ---------------------------------------------------------------------------------------------
# one run per work directory


#: The lock file of a work directory (inside it): the owner's pid, host and command, as JSON.
LOCK_FILE = ".posefix-lock"


@dataclass
class LockOwner:
    """Who holds (or last held) a work directory's lock."""

    pid: int
    host: str
    command: str = "posefix"

    def describe(self) -> str:
        here = socket.gethostname()
        return f"pid {self.pid}" + ("" if self.host == here else f" on host {self.host}")


#: How long a refused run waits for the lock's holder to write its pid (it does right after its flock).
_OWNER_WRITE_WAIT_S = 2.0


def _holder(fd: int) -> Optional[LockOwner]:
    """The owner written in the lock file ``fd`` by the process that holds its flock.

    The holder takes the flock first and writes its pid just after, so a run refused in between reads an
    empty file, or the owner before it (a dead run's). Poll briefly until the file names a live process
    (or one on another host, which cannot be checked); give what it holds then."""
    deadline = time.monotonic() + _OWNER_WRITE_WAIT_S
    while True:
        owner = _read_owner(fd)
        if owner is not None and (owner.host != socket.gethostname() or _pid_alive(owner.pid)):
            return owner
        if time.monotonic() >= deadline:
            return owner
        time.sleep(0.01)


def _read_owner(fd: int) -> Optional[LockOwner]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        data = json.loads(raw.decode("utf-8")) if raw.strip() else None
        if isinstance(data, dict) and isinstance(data.get("pid"), int):
            return LockOwner(int(data["pid"]), str(data.get("host", "")), str(data.get("command", "posefix")))
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class LockedError(InputError):
    """Another live process holds the lock (the message names it)."""

    def __init__(self, message: str, owner: Optional[LockOwner]) -> None:
        super().__init__(message)
        self.owner = owner


class DirectoryLock:
    """An exclusive lock on a work directory, held until :meth:`release` (or the process ends).

    The lock is :data:`LOCK_FILE` inside the directory, created if needed, with an exclusive ``flock``
    on it (taken atomically; the kernel drops it when the process dies, so the lock of a dead run is
    recognised as stale whatever its file says) and the owner's pid and host written in it for messages.
    Where the file system has no ``flock``, the pid and host in the file decide (a pid of this host that is
    not running is stale).

    Attributes:
        directory: the locked directory.
        previous: the owner written in the file before this lock took it (a stale lock's), or None.
    """

    def __init__(self, directory: Path, fd: int, previous: Optional[LockOwner], created: bool = False,
                 previous_text: Optional[bytes] = None) -> None:
        self.directory = directory
        self.previous = previous
        self._fd: Optional[int] = fd
        self._created = created
        self._previous_text = previous_text

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (the file stays when the directory does: a lock nobody holds is stale)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def abandon(self) -> None:
        """Give the directory back as it was found, for a run refused before any work: removed when this
        lock created it (and nothing else was put in it), else its lock file restored (or removed when there
        was none); then release."""
        try:
            if self._created and [p.name for p in self.directory.iterdir()] == [LOCK_FILE]:
                shutil.rmtree(self.directory, ignore_errors=True)
            elif self._previous_text is None:
                (self.directory / LOCK_FILE).unlink(missing_ok=True)
            elif self._fd is not None:
                os.ftruncate(self._fd, 0)
                os.lseek(self._fd, 0, os.SEEK_SET)
                os.write(self._fd, self._previous_text)
        except OSError:
            pass
        finally:
            self.release()

    def remove_directory(self) -> None:
        """Remove the locked directory (while still holding the lock), then release it."""
        try:
            shutil.rmtree(self.directory, ignore_errors=True)
        finally:
            self.release()

    def clear(self) -> None:
        """Empty the locked directory, keeping the lock file (``--overwrite`` of a work directory)."""
        for entry in list(self.directory.iterdir()):
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def __enter__(self) -> "DirectoryLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _locked_message(output: os.PathLike[str] | str, owner: Optional[LockOwner]) -> str:
    who = f"another posefix run ({owner.describe()})" if owner is not None else "another posefix run"
    return f"{who} is writing {output}; wait for it to finish, or choose another --output"


def lock_owner(directory: os.PathLike[str] | str) -> Optional[LockOwner]:
    """The live owner of ``directory``'s lock, or None when nobody holds it (no lock file, or a stale one).
    Looks only; creates and changes nothing."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        owner = _read_owner(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd) or LockOwner(-1, socket.gethostname())
        except OSError:  # no flock here: the pid decides
            if owner is not None and owner.host == socket.gethostname() and owner.pid != os.getpid() and _pid_alive(owner.pid):
                return owner
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def read_lock_owner(directory: os.PathLike[str] | str) -> Optional[LockOwner]:
    """The owner written in ``directory``'s lock file (live or not), or None. Reads only."""
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_owner(fd)
    finally:
        os.close(fd)


def check_unlocked(directory: os.PathLike[str] | str, output: os.PathLike[str] | str) -> None:
    """Raise :class:`LockedError` (one line: "another posefix run (pid N) is writing OUT") when a live
    process holds ``directory``'s lock. Looks only."""
    owner = lock_owner(directory)
    if owner is not None:
        raise LockedError(_locked_message(output, owner), owner)


def lock_directory(directory: os.PathLike[str] | str, output: os.PathLike[str] | str, command: str = "posefix") -> DirectoryLock:
    """Take the exclusive lock of the work directory ``directory`` (created if needed) for a run writing
    ``output`` (see :class:`DirectoryLock`).

    Raises:
        LockedError: a live process holds it (nothing was changed).
        InputError: the directory or its lock file cannot be created (the reason named).
    """
    directory = Path(directory)
    path = directory / LOCK_FILE
    for _ in range(100):
        try:
            created = not os.path.lexists(directory)
            directory.mkdir(parents=True, exist_ok=True)
            had_file = os.path.lexists(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise InputError(f"--output {output}: cannot create its work directory {directory} ({os_reason(err)})") from None
        try:
            previous = _read_owner(fd)
            os.lseek(fd, 0, os.SEEK_SET)
            previous_text = os.read(fd, 1 << 16) if had_file else None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                raise LockedError(_locked_message(output, holder), holder) from None
            except OSError:  # no flock on this file system: a live pid of this host holds it
                if (previous is not None and previous.host == socket.gethostname() and previous.pid != os.getpid()
                        and _pid_alive(previous.pid)):
                    raise LockedError(_locked_message(output, previous), previous) from None
            try:  # the previous owner may have removed the directory between our open and our flock
                same = os.path.samestat(os.stat(path), os.fstat(fd))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(owner) + "\n").encode("utf-8"))
            return DirectoryLock(directory, fd, previous, created=created, previous_text=previous_text)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise InputError(f"--output {output}: could not take the lock of {directory} (it keeps being removed)")
