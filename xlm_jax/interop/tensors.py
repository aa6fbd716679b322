"""Reading and writing PyTorch-world weight files without trusting them.

- safetensors: read and written here with numpy alone (the format is an 8-byte little-endian header length, a JSON
  header {name: {dtype, shape, data_offsets}}, then the raw little-endian bytes), so `from-hf` on a
  `model.safetensors` and `to-hf` need neither torch nor transformers. Every offset is checked against the file
  size, so a truncated download is reported as such instead of failing somewhere inside numpy.
- PyTorch pickles (`pytorch_model.bin`, XLM's `.pth`): `torch.load(..., weights_only=True)`, whose unpickler
  only rebuilds tensors and plain containers and refuses any other global, so a checkpoint from the internet cannot
  run code. Original XLM checkpoints also pickle numpy arrays in `params` (`mask_scores`); numpy's array
  reconstruction functions are added to the allow-list for that, nothing else.
"""
from __future__ import annotations

import json
import os
import re
import struct
from typing import Any, Mapping

import numpy as np

from xlm_jax.errors import UserError

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_MAX_HEADER = 100 * 1024 * 1024
TORCH_PIN = "pip install torch==2.13.0 (the CPU build)"


def _st_dtype(name: str, path: str, key: str):
  if name == "BF16":
    import ml_dtypes
    return ml_dtypes.bfloat16
  if name not in _ST_DTYPES:
    raise UserError(f"{path}: tensor {key!r} has dtype {name}, which xlm_jax cannot read.")
  return _ST_DTYPES[name]


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a .safetensors file as numpy arrays (copies, native dtype; bfloat16 via ml_dtypes)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise UserError(f"{path} is truncated ({size} bytes, not even a safetensors header); download it again.")
    (n,) = struct.unpack("<Q", head)
    if n > _MAX_HEADER or 8 + n > size:
      raise UserError(f"{path} is truncated or not a safetensors file (header of {n} bytes in a {size}-byte file);"
                      " download it again.")
    try:
      header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      raise UserError(f"{path} is not a safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
      raise UserError(f"{path} is not a safetensors file (its header is not a JSON object).")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    needed = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if needed > data_size:
      raise UserError(f"{path} is truncated: its header describes {needed} bytes of tensor data but the file holds "
                      f"{data_size}; download it again.")
    out = {}
    for key, info in header.items():
      dtype = np.dtype(_st_dtype(info["dtype"], path, key))
      begin, end = (int(x) for x in info["data_offsets"])
      shape = tuple(int(s) for s in info["shape"])
      if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or begin > end:
        raise UserError(f"{path}: tensor {key!r} has {end - begin} bytes for shape {shape} and dtype "
                        f"{info['dtype']}; the file is damaged.")
      f.seek(8 + n + begin)
      raw = f.read(end - begin)
      out[key] = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape).astype(dtype, copy=True)
  return out


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
  """Write float32/int tensors as a .safetensors file that transformers and the safetensors package read."""
  names = {np.dtype(v).name: k for k, v in _ST_DTYPES.items()}
  header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  arrays = []
  for key in sorted(tensors):
    arr = np.ascontiguousarray(tensors[key])
    if arr.dtype.name not in names:
      raise ValueError(f"cannot write dtype {arr.dtype} ({key})")
    nbytes = arr.size * arr.dtype.itemsize
    header[key] = {"dtype": names[arr.dtype.name], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
    arrays.append(arr)
  blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for arr in arrays:
      f.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


def _numpy_safe_globals() -> list:
  """numpy's array/scalar/dtype reconstructors under their numpy 1.x and 2.x pickle names (data only)."""
  import numpy._core.multiarray as multiarray
  out: list = []
  for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    out += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
  out += [np.ndarray, np.dtype]
  for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "Int16DType", "Int8DType",
               "UInt8DType", "BoolDType"):
    if hasattr(np.dtypes, name):
      out.append(getattr(np.dtypes, name))
  return out


def torch_load_weights_only(path: str) -> Any:
  """`torch.load(path, weights_only=True)` on CPU, with readable errors; tensors stay torch tensors."""
  try:
    import torch
  except ImportError:
    raise UserError(f"reading {path} (a PyTorch pickle) needs PyTorch: {TORCH_PIN}; or give the weights as "
                    "model.safetensors.") from None
  try:
    with torch.serialization.safe_globals(_numpy_safe_globals()):
      return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - torch raises many types for bad files; all mean "not loadable"
    text = str(e)
    unsafe = re.search(r"(?:Unsupported global|Unsupported operand|GLOBAL)[:\s]+(?:GLOBAL\s+)?([\w.]+)", text)
    if "Weights only load failed" in text or "weights_only" in text.lower():
      what = f" ({unsafe.group(1)})" if unsafe else ""
      raise UserError(f"refusing to load {path}: it is not a plain weights file, it asks to run code or build "
                      f"objects{what} when unpickled; only load checkpoints that hold tensors and plain data."
                      ) from None
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    raise UserError(f"{path} is truncated or not a PyTorch checkpoint (torch.load says: {first[:160]}); download it "
                    "again.") from None


def to_numpy(value: Any, where: str) -> np.ndarray:
  """A torch tensor or numpy array as a numpy array (bfloat16 through float32)."""
  if isinstance(value, np.ndarray):
    return value
  try:
    import torch
  except ImportError:  # pragma: no cover - only torch objects reach here
    raise UserError(f"{where}: unexpected value of type {type(value).__name__}.") from None
  if isinstance(value, torch.Tensor):
    t = value.detach().cpu()
    if t.dtype == torch.bfloat16:
      t = t.float()
    return t.numpy().copy()
  raise UserError(f"{where}: expected a tensor, found {type(value).__name__}.")
