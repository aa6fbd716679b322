"""`xlm-jax evaluate`: held-out scores of a bundle on a parallel text file pair (line i translates line i).

    xlm-jax evaluate runs/demo/nmt --src xa --tgt xb --src-file test.xa --tgt-file test.xb      # BLEU, chrF
    xlm-jax evaluate runs/demo/pretrain --src xa --tgt xb --src-file valid.xa --tgt-file valid.xb
        # masked-token accuracy on the target with its translation in the row (TLM) and without it

Prints one JSON object (and writes it with --out). Translation bundles are scored with the decoder that
`translate` uses; encoder bundles with `xlm_jax.evaluate.tlm_context_accuracy` (the same 15% of target tokens
masked in both conditions).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from xlm_jax.errors import UserError


def _lines(path: str, n: int) -> list[str]:
  import gzip
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      lines = [l.rstrip("\n") for l in f]
  except OSError as e:
    raise UserError(f"cannot read {path}: {e}")
  return lines[:n] if n else lines


def evaluate_pairs(bundle, sources: Sequence[str], targets: Sequence[str], src: str, tgt: str, beam: int = 4,
                   length: int = 256) -> dict:
  """The scores `xlm-jax evaluate` prints, for a loaded bundle and aligned sentences."""
  if len(sources) != len(targets):
    raise UserError(f"{len(sources)} source lines but {len(targets)} target lines; the files must be aligned.")
  if bundle.architecture == "encoder_decoder":
    from xlm_jax.evaluate import bleu, chrf
    hyps = bundle.translate(list(sources), src=src, tgt=tgt, beam=beam)
    scores = bleu(hyps, list(targets), tgt)
    return {"direction": f"{src}-{tgt}", "sentences": len(sources), "beam": beam, "bleu": scores["bleu"],
            "chrf": chrf(hyps, list(targets)), "signature": scores["signature"],
            "samples": [{"src": s, "hyp": h, "ref": r} for s, h, r in list(zip(sources, hyps, targets))[:3]]}
  from xlm_jax.evaluate import tlm_context_accuracy
  tok = bundle.tokenizer
  pairs = [(tok.encode(s, src), tok.encode(t, tgt)) for s, t in zip(sources, targets)]
  out = tlm_context_accuracy(bundle.params, bundle.model_config, pairs, bundle.lang_id(src), bundle.lang_id(tgt),
                             eos_id=tok.eos_id, pad_id=tok.pad_id, mask_id=tok.mask_id, length=length)
  return {"target": tgt, "context": src, **out}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="xlm-jax evaluate", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("bundle", help="a workdir or checkpoint step")
  parser.add_argument("--src", required=True, help="language of --src-file")
  parser.add_argument("--tgt", required=True, help="language of --tgt-file")
  parser.add_argument("--src-file", required=True)
  parser.add_argument("--tgt-file", required=True)
  parser.add_argument("--n", type=int, default=0, help="the first N lines only (0: all)")
  parser.add_argument("--beam", type=int, default=4)
  parser.add_argument("--out", default=None, help="also write the JSON here")
  args = parser.parse_args(argv)
  try:
    import xlm_jax
    bundle = xlm_jax.load(args.bundle)
    result = evaluate_pairs(bundle, _lines(args.src_file, args.n), _lines(args.tgt_file, args.n), args.src, args.tgt,
                            args.beam)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = json.dumps(result, indent=1, ensure_ascii=False)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
