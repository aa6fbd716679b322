"""Small file helpers shared by the tokenizer and the data code: plain or gzip text, atomic writes."""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import tempfile
import zlib
from typing import Iterator

from xlm_jax.errors import UserError

# Bytes that are not UTF-8 decode, under errors="surrogateescape", to lone surrogates U+DC80..U+DCFF, which valid
# UTF-8 never produces (encoded surrogates are themselves invalid and escape byte by byte).
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def open_text(path: str | os.PathLike, errors: str = "strict"):
  """Open a UTF-8 text file (a leading byte-order mark is dropped), gzip-compressed when the name ends in .gz.

  Universal newlines: a line ends at \\n, \\r\\n or a lone \\r. `errors` is the codec error policy."""
  from xlm_jax import paths
  path = os.fspath(path)
  if not paths.exists(path):
    raise UserError(f"file {path!r} does not exist.")
  raw = paths.path(path).open("rb") if paths.is_remote(path) else open(path, "rb")
  if path.endswith(".gz"):
    raw = gzip.GzipFile(fileobj=raw, mode="rb")
  return io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors)


def _not_utf8(path: str, lineno: int, line: str) -> UserError:
  column = _UNDECODABLE.search(line).start()
  byte = ord(line[column]) - 0xDC00
  return UserError(f"{path}, line {lineno}: byte 0x{byte:02x} at character {column + 1} is not UTF-8; re-encode "
                   "the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or remove the line.")


def read_lines(path: str | os.PathLike) -> Iterator[str]:
  """Lines without their line break, decoded as UTF-8.

  Contract: bytes that are not UTF-8 stop the read with a `UserError` naming the file and the exact line (1-based)
  and nothing after it is yielded; a corrupt or truncated gzip file stops it with the file named. Trap: decoding
  is done with errors="surrogateescape" and each line checked, because a strict decoder fails on the whole
  buffered chunk and so reports a line up to a few hundred lines early."""
  path = os.fspath(path)
  with open_text(path, errors="surrogateescape") as f:
    lineno = 0
    try:
      for lineno, line in enumerate(f, 1):
        if not line.isascii() and _UNDECODABLE.search(line):
          raise _not_utf8(path, lineno, line)
        yield line.rstrip("\n").rstrip("\r")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
      raise UserError(f"{path}: the gzip data is corrupt or truncated after line {lineno} ({e}); re-create the "
                      "file.") from None


def count_lines(path: str | os.PathLike) -> int:
  """The number of lines `read_lines` yields (the same errors for bad bytes)."""
  return sum(1 for _ in read_lines(path))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
  """Write to a temporary file beside `path` and rename it into place only if the block succeeds."""
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
  try:
    with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
