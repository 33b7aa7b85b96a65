"""Writing files so that a crash or a reader never meets half of one, and saying in one line why a write
failed."""

import errno
import json
import os
import re
import tempfile
from collections.abc import Iterable

from jaxft.errors import StorageError, UserError


def nearest_existing(path: str) -> str:
    """`path` if it exists, else its closest existing ancestor: the directory that creating it writes into."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def check_directory_path(path: str, what: str) -> None:
    """Raises `UserError` when `path`, or the closest of its ancestors that exists, is not a directory.

    `what` names the option in the message (`--workdir`, `--out`); nothing is created.
    """
    above = nearest_existing(path)
    if not os.path.isdir(above):
        where = "is a file" if above == os.path.abspath(path) else f"{above} is a file"
        raise UserError(f"{what} {path}: {where}, not a directory")


def write_atomic(path: str, data: str | bytes | Iterable[str]) -> None:
    """Writes `data` beside `path` and renames it into place: the file is either the old one or all new.

    `data`: the whole content, or text chunks written as they come (a long output is never held whole).
    """
    directory = os.path.dirname(os.path.abspath(path))
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            f.writelines([data] if isinstance(data, str | bytes) else data)
        # mkstemp creates the file owner-only; outputs should be as readable as any other file.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json_atomic(path: str, payload, **dump_options) -> None:
    """`payload` as indented JSON (plus `json.dumps` options), written with `write_atomic`."""
    write_atomic(path, json.dumps(payload, **{"indent": 2, **dump_options}) + "\n")


def read_json_object(path: str) -> dict:
    """The JSON object in `path` (a file a run wrote); raises `UserError` naming the file when it is
    unreadable, truncated or holds something other than an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{path}: unreadable ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


# tensorstore (Orbax's writer) reports an OS error inside a ValueError: "...: No space left on device
# [os_error_code='28']".
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)")


def error_number(error: BaseException) -> int | None:
    """The errno behind `error`: an `OSError`'s own, or one that tensorstore names in its message."""
    if isinstance(error, OSError):
        return error.errno
    match = _TENSORSTORE_ERRNO.search(str(error))
    return int(match.group(1)) if match else None


def os_reason(error: BaseException) -> str:
    """The OS's reason for `error` as "No space left on device (ENOSPC)"; else the error's first line."""
    number = error_number(error)
    if number is not None and number in errno.errorcode:
        return f"{os.strerror(number)} ({errno.errorcode[number]})"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def storage_error(error: BaseException, path: str, doing: str | None = None) -> StorageError:
    """`error` (an OS error) as one line: the path (the error's own file, if it names one), what was being
    done ("saving checkpoint step 8") and the OS's reason."""
    named = getattr(error, "filename", None)
    return StorageError(f"{named or path}: {f'{doing}: ' if doing else ''}{os_reason(error)}")
