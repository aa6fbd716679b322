"""Translation of raw text, and the `python -m xlm_jax.translate` command.

    python -m xlm_jax.translate --checkpoint RUN_DIR --src en --tgt fr [--beam 4] < in.txt > out.txt

Line i of the output translates line i of the input; an empty (or blank) input line gives an empty output line;
no line is dropped or reordered. Sentences are sorted by length and decoded in batches whose widths are rounded up
to a multiple of `BUCKET`, so a whole file compiles only a few shapes. Decoding goes through `xlm_jax.decode`, the
one decode path that validation BLEU and back-translation use too.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

from xlm_jax.errors import UserError
from xlm_jax.tokenizer import frame

BUCKET = 16


def translate_ids(params, enc_cfg, dec_cfg, sources: Sequence[Sequence[int]], src_lang: int, tgt_lang: int, *,
                  eos_id: int, pad_id: int, beam_size: int = 1, length_penalty: float = 1.0,
                  early_stopping: bool = False, max_len_a: float = 1.5, max_len_b: float = 10.0,
                  batch_size: int = 64, vocab_mask=None) -> list[list[int]]:
  """Decode token-id sentences (unframed) into target token ids (unframed), in input order. `vocab_mask`: see
  `decode.output_vocab_mask`."""
  from xlm_jax import decode
  out: list[list[int] | None] = [None] * len(sources)
  order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
  limit = enc_cfg.max_positions
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    rows = [frame(list(sources[i])[:limit - 2], eos_id) for i in chunk]
    width = min(limit, -(-max(len(r) for r in rows) // BUCKET) * BUCKET)
    n = len(rows)
    size = batch_size if len(order) > batch_size else max(8, -(-n // 8) * 8)
    tokens = np.full((size, width), pad_id, np.int32)
    for j, r in enumerate(rows):
      tokens[j, :len(r)] = r
    tokens[n:, :2] = eos_id  # filler rows: an empty sentence
    src_langs = np.full((size,), src_lang, np.int32) if enc_cfg.has_lang_emb else None
    tgt_langs = np.full((size,), tgt_lang, np.int32) if dec_cfg.has_lang_emb else None
    decoded = decode.generate(params, enc_cfg, dec_cfg, tokens, src_langs, tgt_langs, eos_id=eos_id, pad_id=pad_id,
                              beam_size=beam_size, length_penalty=length_penalty, early_stopping=early_stopping,
                              max_len_a=max_len_a, max_len_b=max_len_b, vocab_mask=vocab_mask)
    hyps = decode.to_lists(decoded, eos_id)
    for j, i in enumerate(chunk):
      out[i] = hyps[j]
  return out  # type: ignore[return-value]


def translate_texts(params, enc_cfg, dec_cfg, tokenizer, texts: Sequence[str], src: str, tgt: str,
                    languages: Sequence[str], **options) -> list[str]:
  """Raw text in language `src` -> detokenized text in `tgt`; empty lines stay empty."""
  lang2id = {l: i for i, l in enumerate(languages)}
  for code in (src, tgt):
    if code not in lang2id:
      raise UserError(f"unknown language {code!r}; this model knows {list(languages)}.")
  keep = [i for i, t in enumerate(texts) if t.strip()]
  ids = [tokenizer.encode(texts[i], src) for i in keep]
  hyps = translate_ids(params, enc_cfg, dec_cfg, ids, lang2id[src], lang2id[tgt], eos_id=tokenizer.eos_id,
                       pad_id=tokenizer.pad_id, **options) if keep else []
  out = [""] * len(texts)
  for i, h in zip(keep, hyps):
    out[i] = tokenizer.decode(h)
  return out


def read_input(stream) -> list[str]:
  """Lines of a binary stream as text; bytes that are not UTF-8 are an error naming the line."""
  lines = []
  for n, raw in enumerate(stream, 1):
    try:
      lines.append(raw.decode("utf-8").rstrip("\n").rstrip("\r"))
    except UnicodeDecodeError as e:
      raise UserError(f"input line {n} is not UTF-8 ({e.reason}); re-encode the input as UTF-8.") from None
  return lines


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m xlm_jax.translate", description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", required=True, help="an NMT bundle: a workdir or one checkpoint step")
  parser.add_argument("--src", required=True)
  parser.add_argument("--tgt", required=True)
  parser.add_argument("--beam", type=int, default=4)
  parser.add_argument("--length-penalty", type=float, default=1.0)
  parser.add_argument("--early-stopping", action="store_true")
  parser.add_argument("--batch-size", type=int, default=64)
  args = parser.parse_args(argv)
  try:
    lines = read_input(sys.stdin.buffer)
    if not lines:
      raise UserError("the input is empty; give one sentence per line on standard input.")
    import xlm_jax
    bundle = xlm_jax.load(args.checkpoint)
    out = bundle.translate(lines, src=args.src, tgt=args.tgt, beam=args.beam, length_penalty=args.length_penalty,
                           early_stopping=args.early_stopping, batch_size=args.batch_size)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  sys.stdout.write("".join(line + "\n" for line in out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
