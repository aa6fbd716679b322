"""Cross-lingual retrieval without fine-tuning: find each sentence's translation among N candidates.

  python -m xlm_jax.retrieval --bundle runs/m30k_tiny --data ../shared/data/multi30k --split test_2016_flickr \
      --pairs en-fr,en-de [--n 1000] [--pooling first|mean] [--out retrieval.json]

For every aligned pair (a_i, b_i) of the two files `{split}.{l1}[.gz]` and `{split}.{l2}[.gz]`, the sentence
embeddings (`Bundle.embed`: the hidden state of one layer at the first `</s>`, or the mean over real tokens) are
compared by cosine similarity; a_i is right when b_i is its nearest candidate among all b_j (top-1 accuracy), and
the same from b to a. Chance is 1/N. Accuracy per language pair, direction and layer (0 = the embedding layer's
output, then each Transformer layer).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import numpy as np

from xlm_jax.errors import UserError


def layer_embeddings(bundle, texts: Sequence[str], lang: str, pooling: str = "first",
                     batch: int = 256) -> np.ndarray:
  """[n_layers + 1, N, D] sentence embeddings of every layer (one forward pass per batch)."""
  if pooling not in ("first", "mean"):
    raise UserError(f"pooling={pooling!r}: use 'first' or 'mean'.")
  out = []
  for start in range(0, len(texts), batch):
    ids = bundle.encode(list(texts[start:start + batch]), lang)
    states = bundle.hidden_states(ids, langs=lang, all_layers=True)  # [layers + 1, B, L, D]
    if pooling == "first":
      out.append(states[:, :, 0])
    else:
      real = (ids != bundle.tokenizer.pad_id)[None, ..., None].astype(np.float32)
      out.append((states * real).sum(2) / np.maximum(real.sum(2), 1.0))
  return np.concatenate(out, axis=1)


def top1(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
  """(accuracy x->y, accuracy y->x) of nearest-neighbour search by cosine similarity; row i matches row i."""
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
  y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-9)
  sim = x @ y.T
  right = np.arange(len(x))
  return float(np.mean(sim.argmax(1) == right)), float(np.mean(sim.argmax(0) == right))


def retrieval(bundle, pairs: dict[tuple[str, str], list[tuple[str, str]]], pooling: str = "first") -> dict:
  """{'l1-l2': {'n', 'chance', 'layers': [{'layer', 'l1->l2', 'l2->l1'}]}} for aligned sentence pairs."""
  out = {}
  for (l1, l2), aligned in pairs.items():
    if len(aligned) < 2:
      raise UserError(f"retrieval {l1}-{l2}: {len(aligned)} sentence pair(s); give at least 2.")
    x = layer_embeddings(bundle, [a for a, _ in aligned], l1, pooling)
    y = layer_embeddings(bundle, [b for _, b in aligned], l2, pooling)
    layers = []
    for k in range(len(x)):
      forward, backward = top1(x[k], y[k])
      layers.append({"layer": k, f"{l1}->{l2}": forward, f"{l2}->{l1}": backward})
    out[f"{l1}-{l2}"] = {"n": len(aligned), "chance": 1.0 / len(aligned), "pooling": pooling, "layers": layers}
  return out


def read_aligned(folder: str, split: str, l1: str, l2: str, n: int) -> list[tuple[str, str]]:
  """The first `n` aligned non-empty pairs of `{split}.{l1}[.gz]` / `{split}.{l2}[.gz]` in `folder`."""
  from xlm_jax.data.labelled import _open_text
  from xlm_jax import paths

  def lines(lang: str) -> list[str]:
    for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
      path = paths.join(folder, name)
      if paths.exists(path):
        return [l.strip() for l in _open_text(path)]
    raise UserError(f"no file {split}.{lang}[.gz] in {folder}.")

  a, b = lines(l1), lines(l2)
  if len([x for x in a if x]) != len([x for x in b if x]):
    raise UserError(f"{folder}: {split}.{l1} and {split}.{l2} have different numbers of lines; they must be aligned.")
  return [(x, y) for x, y in zip(a, b) if x and y][:n or None]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m xlm_jax.retrieval", description=__doc__.split("\n\n")[0])
  parser.add_argument("--bundle", required=True, help="a pretraining (or any encoder) workdir or checkpoint")
  parser.add_argument("--data", required=True, help="a folder of aligned {split}.{lang}[.gz] files")
  parser.add_argument("--split", default="test_2016_flickr")
  parser.add_argument("--pairs", default="en-fr,en-de", help="comma-separated l1-l2")
  parser.add_argument("--n", type=int, default=1000, help="sentence pairs (candidates) per language pair")
  parser.add_argument("--pooling", default="first", choices=("first", "mean"))
  parser.add_argument("--out", default="", help="write the results as JSON here")
  args = parser.parse_args(argv)
  import xlm_jax
  try:
    bundle = xlm_jax.load(args.bundle)
    wanted = [tuple(p.split("-")) for p in args.pairs.split(",") if p.strip()]
    for pair in wanted:
      if len(pair) != 2:
        raise UserError(f"--pairs entry {'-'.join(pair)!r} must be l1-l2.")
      for lang in pair:
        bundle.lang_id(lang)
    pairs = {p: read_aligned(args.data, args.split, p[0], p[1], args.n) for p in wanted}
    result = retrieval(bundle, pairs, args.pooling)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for name, r in result.items():
    l1, l2 = name.split("-")
    print(f"{name}: {r['n']} pairs, chance {r['chance']:.4f} ({r['pooling']} pooling)")
    for row in r["layers"]:
      print(f"  layer {row['layer']}: {l1}->{l2} {row[f'{l1}->{l2}']:.3f}  {l2}->{l1} {row[f'{l2}->{l1}']:.3f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
