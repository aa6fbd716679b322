"""Published XLM checkpoints in and out, each conversion proved on logits.

    python -m xlm_jax.convert from-hf  HF_DIR   OUT_DIR   # transformers XLMWithLMHeadModel directory -> bundle
    python -m xlm_jax.convert from-xlm FILE.pth OUT_DIR   # original facebookresearch/XLM checkpoint -> bundle
    python -m xlm_jax.convert to-hf    CKPT_DIR OUT_DIR   # bundle -> directory for XLMWithLMHeadModel.from_pretrained

After writing, the output is opened again (`xlm_jax.load` for bundles, `from_pretrained` for HF directories) and,
when torch and transformers are importable, both models run on a fixed right-padded batch with language ids; the
largest absolute logit difference (ours in float32 against transformers in float64) is printed and the conversion
fails above `--tolerance` (1e-4) - unless the model is so large that float32 rounding alone exceeds it, in which
case up to twice transformers' own float32 error is accepted, and the line says so. Everything is written to a
temporary directory beside OUT_DIR and renamed at the end: a failed conversion leaves nothing behind.
Mistakes a user can fix print one line `error: ...` and exit with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Sequence

from xlm_jax.errors import UserError

if TYPE_CHECKING:
  from xlm_jax.interop.parity import ParityResult

DESCRIPTION = __doc__.split("\n\n")[0]


@dataclasses.dataclass
class Report:
  """What a conversion did: the output path, the parity figure (None when skipped) and the notes printed."""
  out_dir: str
  parity: "ParityResult | None"
  notes: list[str]


def _say(message: str, quiet: bool = False) -> None:
  if not quiet:
    print(message, flush=True)


def _languages(text: str | None) -> list[str] | None:
  return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _verify(bundle, make_reference, tolerance: float, check: bool, quiet: bool, tokenizer_check=None):
  """Run the parity check if possible; raise UserError above tolerance. Returns the ParityResult or None."""
  from xlm_jax.interop import parity
  if not check:
    _say("parity check skipped (--no-check).", quiet)
    return None
  missing = parity.missing_dependencies()
  if missing:
    _say(f"parity check skipped: {missing}.", quiet)
    return None
  _say("running both models on a fixed batch ...", quiet)
  result = parity.check_bundle(bundle, make_reference())
  if tokenizer_check is not None:
    result.tokenizer_sentences = tokenizer_check()
  _say(result.line(tolerance), quiet)
  if not result.passes(tolerance):
    raise UserError(f"the converted model disagrees with transformers: max |Δlogit| = {result.max_abs_diff:.3g} > "
                    f"tolerance {tolerance:g} (transformers' own float32 error on this batch: "
                    f"{result.reference_float32_error:.3g}); nothing was written.")
  return result


def _import(converted, out_dir: str, *, check: bool, tolerance: float, quiet: bool, make_reference,
            tokenizer_check=None) -> Report:
  from xlm_jax.interop import bundle_io
  import xlm_jax
  _say(f"model: {converted.describe()}", quiet)
  tok = converted.tokenizer
  merges = getattr(tok, "merges", None)
  _say(f"tokenizer: {tok.kind}, {tok.vocab_size} pieces" + (f", {len(merges)} merges" if merges is not None else "")
       + (f", lowercase+remove accents {'on' if tok.do_lowercase_and_remove_accent else 'off'}"
          if tok.kind == "xlm_bpe" else ""), quiet)
  for note in converted.notes:
    _say(f"note: {note}", quiet)
  with bundle_io.staged_output(out_dir) as tmp:
    _say("writing the bundle ...", quiet)
    bundle_io.save_bundle(tmp, converted)
    bundle = xlm_jax.load(tmp)
    result = _verify(bundle, make_reference, tolerance, check, quiet, tokenizer_check)
  out = os.path.abspath(os.path.expanduser(out_dir))
  _say(f"wrote {out} (open it with xlm_jax.load)", quiet)
  return Report(out, result, list(converted.notes))


def from_hf(hf_dir: str, out_dir: str, *, vocab: str | None = None, merges: str | None = None,
            lowercase: bool | None = None, languages: Sequence[str] | None = None, check: bool = True,
            tolerance: float = 1e-4, quiet: bool = False) -> Report:
  """Convert a transformers XLMWithLMHeadModel directory into a bundle at `out_dir`."""
  from xlm_jax.interop import bundle_io, hf, parity
  bundle_io.check_new_output(os.path.abspath(os.path.expanduser(out_dir)))
  _say(f"reading {hf_dir} ...", quiet)
  converted = hf.read_hf_dir(hf_dir, vocab_file=vocab, merges_file=merges, lowercase=lowercase, languages=languages)
  tok = converted.tokenizer
  tokenizer_check = None
  if tok.kind == "xlm_bpe" and _has_sacremoses():
    vocab_file = vocab or os.path.join(converted.source["path"], "vocab.json")
    merges_file = merges or os.path.join(converted.source["path"], "merges.txt")

    def tokenizer_check():
      hf_tok = parity.hf_tokenizer(vocab_file, merges_file, tok.do_lowercase_and_remove_accent)
      return parity.check_tokenizer(tok, hf_tok, converted.languages)
  return _import(converted, out_dir, check=check, tolerance=tolerance, quiet=quiet,
                 make_reference=lambda: parity.hf_model_from_dir(converted.source["path"]),
                 tokenizer_check=tokenizer_check)


def from_xlm(pth: str, out_dir: str, *, codes: str | None = None, lowercase: bool | None = None,
             languages: Sequence[str] | None = None, check: bool = True, tolerance: float = 1e-4,
             quiet: bool = False) -> Report:
  """Convert an original XLM checkpoint (.pth) into a bundle at `out_dir`; NMT files keep encoder and decoder."""
  from xlm_jax.interop import bundle_io, parity, xlm_original
  bundle_io.check_new_output(os.path.abspath(os.path.expanduser(out_dir)))
  _say(f"reading {pth} (weights only) ...", quiet)
  converted = xlm_original.read_xlm_checkpoint(pth, codes_file=codes, lowercase=lowercase, languages=languages)
  if converted.architecture == "encoder_decoder":
    converted.notes.append("the decoder (with cross-attention) is imported with every shape checked; transformers "
                           "has no XLM decoder, so only the encoder is compared on logits.")
  ref = converted.reference
  return _import(converted, out_dir, check=check, tolerance=tolerance, quiet=quiet,
                 make_reference=lambda: parity.hf_model_from_state(ref["state"], ref["hf_config"]))


def to_hf(ckpt_dir: str, out_dir: str, *, encoder_only: bool = False, check: bool = True, tolerance: float = 1e-4,
          quiet: bool = False) -> Report:
  """Write a bundle as a transformers XLMWithLMHeadModel directory (config, safetensors, tokenizer files)."""
  import numpy as np
  import jax
  import xlm_jax
  from xlm_jax.interop import bundle_io, hf, parity
  bundle_io.check_new_output(os.path.abspath(os.path.expanduser(out_dir)))
  _say(f"reading {ckpt_dir} ...", quiet)
  bundle = xlm_jax.load(ckpt_dir)
  if bundle.architecture == "encoder_decoder" and not encoder_only:
    raise UserError(f"{ckpt_dir} is an encoder-decoder (NMT) bundle and transformers has no XLM decoder; pass "
                    "--encoder-only to export its encoder alone.")
  params = jax.tree.map(np.asarray, bundle.encoder_params)
  base = bundle.config.get("hf_config") if isinstance(bundle.config, dict) else None
  provenance = {"bundle": os.path.abspath(ckpt_dir), "task": bundle.meta.get("task")}
  notes: list[str] = []
  with bundle_io.staged_output(out_dir) as tmp:
    _say("writing config.json, model.safetensors and tokenizer files ...", quiet)
    notes = hf.write_hf_dir(tmp, bundle.model_config, params, bundle.languages, bundle.tokenizer, base, provenance)
    for note in notes:
      _say(f"note: {note}", quiet)
    tokenizer_check = None
    tok = bundle.tokenizer
    if tok.kind == "xlm_bpe" and getattr(tok, "merges", None) is not None and _has_sacremoses():
      def tokenizer_check():
        return parity.check_tokenizer(tok, parity.hf_tokenizer_from_dir(tmp), bundle.languages)
    result = _verify(bundle, lambda: parity.hf_model_from_dir(tmp), tolerance, check, quiet, tokenizer_check)
  out = os.path.abspath(os.path.expanduser(out_dir))
  _say(f"wrote {out} (open it with transformers.XLMWithLMHeadModel.from_pretrained)", quiet)
  return Report(out, result, notes)


def _has_sacremoses() -> bool:
  try:
    import sacremoses  # noqa: F401
  except ImportError:
    return False
  return True


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m xlm_jax.convert", description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True, metavar="{from-hf,from-xlm,to-hf}")

  def common(p: argparse.ArgumentParser, importer: bool) -> None:
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the logit comparison with transformers")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted max |Δlogit| (default 1e-4; a larger one only within the model's float32 "
                        "rounding, i.e. twice transformers' own float32 error)")
    p.add_argument("--quiet", action="store_true", help="print errors only")
    if importer:
      case = p.add_mutually_exclusive_group()
      case.add_argument("--lowercase", dest="lowercase", action="store_const", const=True, default=None,
                        help="the model's text was lowercased with accents removed (XLM 15/en-xx models)")
      case.add_argument("--cased", dest="lowercase", action="store_const", const=False,
                        help="the model's text kept case and accents (XLM-17 / XLM-100)")
      p.add_argument("--languages", help="language codes in language-id order, e.g. en,fr (only when the source "
                                         "has no language map)")

  p = sub.add_parser("from-hf", help="transformers XLMWithLMHeadModel directory -> bundle")
  p.add_argument("hf_dir", metavar="HF_DIR")
  p.add_argument("out_dir", metavar="OUT_DIR")
  p.add_argument("--vocab", help="vocab.json to use instead of HF_DIR/vocab.json")
  p.add_argument("--merges", help="merges.txt to use instead of HF_DIR/merges.txt")
  common(p, True)

  p = sub.add_parser("from-xlm", help="original facebookresearch/XLM checkpoint (.pth) -> bundle")
  p.add_argument("pth", metavar="FILE.pth")
  p.add_argument("out_dir", metavar="OUT_DIR")
  p.add_argument("--codes", help="the fastBPE codes file of the model (needed to encode text)")
  common(p, True)

  p = sub.add_parser("to-hf", help="bundle -> transformers XLMWithLMHeadModel directory")
  p.add_argument("ckpt_dir", metavar="CKPT_DIR")
  p.add_argument("out_dir", metavar="OUT_DIR")
  p.add_argument("--encoder-only", action="store_true", help="export the encoder of an encoder-decoder bundle")
  common(p, False)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    if args.command == "from-hf":
      from_hf(args.hf_dir, args.out_dir, vocab=args.vocab, merges=args.merges, lowercase=args.lowercase,
              languages=_languages(args.languages), check=args.check, tolerance=args.tolerance, quiet=args.quiet)
    elif args.command == "from-xlm":
      from_xlm(args.pth, args.out_dir, codes=args.codes, lowercase=args.lowercase,
               languages=_languages(args.languages), check=args.check, tolerance=args.tolerance, quiet=args.quiet)
    else:
      to_hf(args.ckpt_dir, args.out_dir, encoder_only=args.encoder_only, check=args.check, tolerance=args.tolerance,
            quiet=args.quiet)
  except UserError as e:
    from xlm_jax.cli import fail
    fail(str(e))
  return 0


if __name__ == "__main__":
  sys.exit(main())
