"""Reading a data file line by line: the decoding and text checks every reader shares.

Bytes are decoded line by line, which is what lets a decoding error report its line number; a lone UTF-16
surrogate (half a pair, as JSON can escape it) is refused as not text. Each problem is a `UserError` naming
the file (and line).
"""

import codecs
import gzip
import re
import zlib
from collections.abc import Iterator

from jaxft.errors import UserError


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, decoded line with its newline), dropping a leading UTF-8 byte-order mark
    (MRPC has one); plain or gzip. Every read error is a `UserError` naming the file (and line)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"{path}: line {number} is not valid UTF-8") from None
                yield number, line
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a data file") from None
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read the file: {one_line(e)}") from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(where: str, value: str, what: str) -> str:
    """`value`, unless it holds a lone UTF-16 surrogate (JSON's escape of half a pair, e.g. of U+D800),
    which is not text: the tokenizer, and every file or terminal it would be written to, fail on it.

    Raises:
      UserError: naming `where` (path:line) and `what` (the field), without the character itself.
    """
    match = _SURROGATE.search(value)
    if match:
        raise UserError(
            f"{where}: {what} holds U+{ord(match.group()):04X} at character {match.start()}, half of a "
            "UTF-16 surrogate pair: not valid Unicode text"
        )
    return value
