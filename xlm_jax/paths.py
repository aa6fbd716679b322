"""The one path layer: workdirs, checkpoints, metrics, tokenizer files, prepared data and corpora, local or remote.

Every path is a string or an `etils.epath.Path`; `gs://bucket/x` (and the other schemes epath knows: s3://, az://,
hf://) stays a URL from the command line to the file system call, and local paths are made absolute. The trap this
module exists for: `os.path.abspath("gs://b/x")` is `$PWD/gs:/b/x`, a local folder, and `os.path.join` /
`open` silently write there. Build paths with `join`, test them with `exists`/`isdir`, read and write them with
`read_text`/`write_text`/`open` here, never with `os.path` on a path that may be a URL.

Memory-mapped stores need local files: `data_cache_dir` puts prepared data under the workdir when the workdir is
local, and under `config.data.cache_dir` (default `~/.cache/xlm_jax/prepared/<bucket-and-path>`) when it is remote.
"""
from __future__ import annotations

import os
import re
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike]
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
LOCAL_CACHE = "~/.cache/xlm_jax/prepared"


def is_remote(path: PathLike) -> bool:
  """True for URLs (gs://, s3://, ...); False for local paths and file:// URLs."""
  text = os.fspath(path)
  return bool(_SCHEME.match(text)) and not text.startswith("file://")


def resolve(path: PathLike) -> str:
  """A path as the rest of the code keeps it: URLs unchanged (no trailing slash), local paths absolute with `~`
  expanded."""
  text = os.fspath(path)
  if is_remote(text):
    return text.rstrip("/") if not text.endswith("://") else text
  if text.startswith("file://"):
    text = text[len("file://"):]
  return os.path.abspath(os.path.expanduser(text))


def join(base: PathLike, *parts: str) -> str:
  """`base/part/...` for local paths and URLs alike (a URL keeps its scheme and `//`)."""
  text = os.fspath(base)
  if is_remote(text):
    return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])
  return os.path.join(text, *parts)


def basename(path: PathLike) -> str:
  return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def dirname(path: PathLike) -> str:
  text = os.fspath(path).rstrip("/")
  if is_remote(text):
    return text.rsplit("/", 1)[0]
  return os.path.dirname(text)


def path(p: PathLike) -> epath.Path:
  """The epath.Path of a resolved path (URLs go to epath's remote backends)."""
  return epath.Path(resolve(p))


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def isfile(p: PathLike) -> bool:
  q = path(p)
  return q.exists() and not q.is_dir()


def listdir(p: PathLike) -> list[str]:
  """Names in a directory ([] when it does not exist)."""
  q = path(p)
  return sorted(c.name for c in q.iterdir()) if q.is_dir() else []


def makedirs(p: PathLike) -> None:
  path(p).mkdir(parents=True, exist_ok=True)


def read_text(p: PathLike) -> str:
  return path(p).read_text(encoding="utf-8")


def write_text(p: PathLike, text: str) -> None:
  """Write a whole file. Local: atomically (temporary file + rename). Remote: one object upload, which object
  stores make visible all at once."""
  if is_remote(p):
    path(dirname(p)).mkdir(parents=True, exist_ok=True)
    path(p).write_text(text, encoding="utf-8")
    return
  from xlm_jax.io_utils import atomic_write
  with atomic_write(resolve(p)) as f:
    f.write(text)


def data_cache_dir(cache_dir: str, workdir: PathLike) -> str:
  """Where prepared (memory-mapped) data goes: `cache_dir` when set (must be local), else WORKDIR/data for a local
  workdir, else a local folder named after the remote workdir."""
  from xlm_jax.errors import UserError
  if cache_dir:
    if is_remote(cache_dir):
      raise UserError(f"config.data.cache_dir={cache_dir!r} must be a local directory: prepared data is "
                      "memory-mapped; point it at a local disk (the workdir itself may stay remote).")
    return resolve(cache_dir)
  if not is_remote(workdir):
    return join(resolve(workdir), "data")
  local = re.sub(r"[^A-Za-z0-9._-]+", "_", os.fspath(workdir).split("://", 1)[1]).strip("_")
  return resolve(os.path.join(LOCAL_CACHE, local))


class AppendFile:
  """A text file opened for appending (metrics.jsonl, batch checksums), local or remote.

  Object stores cannot append, so for a URL the lines are kept in memory (after the file's existing content) and
  the whole object is rewritten on every `flush`: fine for logs of thousands of lines, not for bulk data."""

  def __init__(self, p: PathLike):
    self.name = resolve(p)
    self._remote = is_remote(self.name)
    if self._remote:
      self._text = read_text(self.name) if exists(self.name) else ""
      self._dirty = False
    else:
      makedirs(dirname(self.name))
      self._f = open(self.name, "a", encoding="utf-8")

  def write(self, text: str) -> None:
    if self._remote:
      self._text += text
      self._dirty = True
    else:
      self._f.write(text)

  def flush(self) -> None:
    if self._remote:
      if self._dirty:
        write_text(self.name, self._text)
        self._dirty = False
    else:
      self._f.flush()

  def close(self) -> None:
    self.flush()
    if not self._remote:
      self._f.close()


class Mirror:
  """Files written locally (TensorBoard event files, which are appended to) copied to a remote folder on `sync`;
  only files whose size changed since the last sync are uploaded."""

  def __init__(self, local_dir: str, remote_dir: str):
    self.local_dir, self.remote_dir = resolve(local_dir), resolve(remote_dir)
    self._sizes: dict[str, int] = {}

  def sync(self) -> None:
    for folder, _, names in os.walk(self.local_dir):
      for name in names:
        local = os.path.join(folder, name)
        size = os.path.getsize(local)
        if self._sizes.get(local) != size:
          target = join(self.remote_dir, *os.path.relpath(local, self.local_dir).split(os.sep))
          makedirs(dirname(target))
          with open(local, "rb") as src, path(target).open("wb") as dst:
            dst.write(src.read())
          self._sizes[local] = size
