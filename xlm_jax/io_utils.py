"""Small file helpers shared by the tokenizer and the data code: plain or gzip text, atomic writes."""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import tempfile
from typing import Iterator

from xlm_jax.errors import UserError


def open_text(path: str | os.PathLike):
  """Open a UTF-8 text file, gzip-compressed when the name ends in .gz."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise UserError(f"file {path!r} does not exist.")
  if path.endswith(".gz"):
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
  return open(path, encoding="utf-8")


def read_lines(path: str | os.PathLike) -> Iterator[str]:
  """Lines without their newline. Bytes that are not UTF-8 stop the read with the file and line named."""
  path = os.fspath(path)
  with open_text(path) as f:
    lineno = 0
    try:
      for lineno, line in enumerate(f, 1):
        yield line.rstrip("\n").rstrip("\r")
    except UnicodeDecodeError as e:
      raise UserError(f"{path}:{lineno + 1}: bytes that are not UTF-8 ({e.reason}); re-encode the file as UTF-8."
                      ) from None


def count_lines(path: str | os.PathLike) -> int:
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
