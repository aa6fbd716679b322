"""Tokenizers: the shared sentencepiece BPE vocabulary, trained with language-balanced sampling.

Every tokenizer a bundle can hold implements `Tokenizer`; `tokenizer_from_state` rebuilds one from the JSON-able
state stored in each checkpoint. Special ids follow the XLM dictionary so that our own and imported models agree:

  <s>=0 (never used)  </s>=1 (opens and closes every sentence)  <pad>=2  <unk>=3  <special0>=4  <mask>=5

Framing, as in XLM: a sentence is `</s> w1 ... wn </s>`; `</s>` doubles as BOS, `<s>` is never used.
`<special0>`, `<mask>` and the language tags (`<lang:xx>`) are control symbols: raw text never produces them
(insert language tags by id with `lang_tag_id`), except that `encode` turns the literal string "<mask>" into the
mask id so that fill-in-the-blank examples can be typed.
"""
from __future__ import annotations

import base64
import hashlib
import io
import itertools
import os
from typing import Callable, Iterable, Iterator, Mapping, Protocol, Sequence, Union

import numpy as np
import sentencepiece as spm

from xlm_jax.errors import UserError
from xlm_jax.io_utils import read_lines

BOS_ID, EOS_ID, PAD_ID, UNK_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4, 5
SPECIAL_PIECES = ("<s>", "</s>", "<pad>", "<unk>", "<special0>", "<mask>")
MASK_PIECE = "<mask>"


def lang_tag(lang: str) -> str:
  return f"<lang:{lang}>"


class Tokenizer(Protocol):
  """What the rest of xlm_jax needs from a tokenizer."""

  kind: str
  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int
  unk_id: int
  mask_id: int

  def encode(self, text: str, lang: str | None = None) -> list[int]:
    """Token ids of one sentence, without framing."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ids; special ids (pad, eos, bos, mask, language tags) are dropped."""

  def id_to_piece(self, i: int) -> str:
    ...

  def state(self) -> dict:
    """A JSON-able dict from which `tokenizer_from_state` rebuilds an identical tokenizer."""

  def fingerprint(self) -> str:
    """A hash of everything that decides the ids; equal fingerprints mean interchangeable tokenizers."""


def frame(ids: Sequence[int], eos_id: int = EOS_ID) -> list[int]:
  """`</s> ids </s>`: XLM's framing of one sentence."""
  return [eos_id, *ids, eos_id]


class SentencePieceTokenizer:
  """A sentencepiece BPE model with XLM's special ids and per-language control tags."""

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes, languages: Sequence[str] = ()):
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    self.languages = tuple(languages)
    self.vocab_size = self._sp.get_piece_size()
    self.bos_id, self.eos_id, self.pad_id, self.unk_id = BOS_ID, EOS_ID, PAD_ID, UNK_ID
    self.mask_id = MASK_ID
    expected = {i: p for i, p in enumerate(SPECIAL_PIECES)}
    for i, piece in expected.items():
      if self._sp.id_to_piece(i) != piece:
        raise UserError(f"sentencepiece model has {self._sp.id_to_piece(i)!r} at id {i}, expected {piece!r}; "
                        "train it with xlm_jax.tokenizer.train_sentencepiece.")
    self._special = {i for i in range(self.vocab_size) if self._sp.is_control(i) or i in (PAD_ID, MASK_ID, SEP_ID)}

  def encode(self, text: str, lang: str | None = None) -> list[int]:
    if MASK_PIECE not in text:
      return self._sp.encode(text)
    ids: list[int] = []
    for i, part in enumerate(text.split(MASK_PIECE)):
      if i:
        ids.append(MASK_ID)
      if part.strip():
        ids.extend(self._sp.encode(part.strip()))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if int(i) not in self._special])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def piece_to_id(self, piece: str) -> int:
    return self._sp.piece_to_id(piece)

  def lang_tag_id(self, lang: str) -> int:
    if lang not in self.languages:
      raise UserError(f"the tokenizer has no language {lang!r}; it knows {list(self.languages)}.")
    return self._sp.piece_to_id(lang_tag(lang))

  def state(self) -> dict:
    return {"kind": self.kind, "model": base64.b64encode(self._proto).decode("ascii"),
            "languages": list(self.languages)}

  def fingerprint(self) -> str:
    return hashlib.sha256(self._proto).hexdigest()[:16]

  def save(self, path: str | os.PathLike) -> None:
    with open(path, "wb") as f:
      f.write(self._proto)


class LanguageEncoder:
  """`tokenizer.encode(text, lang)` as a callable that pickles: pickled, it carries `tokenizer.state()` and the
  receiving process rebuilds the tokenizer once (`tokenizer_from_state`).

  This is what lets data preparation encode in spawned worker processes. The trap it avoids: forking a process
  that already runs JAX's threads can deadlock the child, and a lambda around a tokenizer cannot be sent to a
  spawned one. A kind added with `register_tokenizer_kind` travels with it: its factory is pickled by reference
  (so it must be a module-level function) and registered in the receiving process."""

  def __init__(self, tokenizer: Tokenizer, lang: str | None):
    self.tokenizer, self.lang = tokenizer, lang

  def __call__(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, self.lang)

  def __reduce__(self):
    state = self.tokenizer.state()
    return _language_encoder_from_state, (state, self.lang, _EXTRA_KINDS.get(state.get("kind")))


def _language_encoder_from_state(state: Mapping, lang: str | None, factory=None) -> LanguageEncoder:
  if factory is not None:  # a kind registered at run time in the sending process (a spawned worker lacks it)
    _EXTRA_KINDS.setdefault(state.get("kind"), factory)
  return LanguageEncoder(tokenizer_from_state(state), lang)


def tokenizer_from_state(state: Mapping) -> Tokenizer:
  """Rebuild a tokenizer saved with `Tokenizer.state()`."""
  kind = state.get("kind")
  if kind == SentencePieceTokenizer.kind:
    return SentencePieceTokenizer(base64.b64decode(state["model"]), state.get("languages", ()))
  if kind == "xlm_bpe":  # published XLM models: Moses + BPE merges (xlm_jax/interop/xlm_bpe.py), imported lazily
    from xlm_jax.interop.xlm_bpe import XLMBPETokenizer
    return XLMBPETokenizer.from_state(state)
  factory = _EXTRA_KINDS.get(kind)
  if factory is None:
    raise UserError(f"unknown tokenizer kind {kind!r} in the bundle; known kinds: "
                    f"{[SentencePieceTokenizer.kind, *_EXTRA_KINDS]}.")
  return factory(state)


_EXTRA_KINDS: dict = {}


def register_tokenizer_kind(kind: str, factory) -> None:
  """Let another module (e.g. the XLM BPE importer) add a tokenizer implementation."""
  _EXTRA_KINDS[kind] = factory


def language_sampling_probs(counts: Mapping[str, int], alpha: float) -> dict[str, float]:
  """p_l proportional to n_l**alpha (alpha=1: proportional to size, alpha=0: uniform)."""
  langs = sorted(counts)
  n = np.array([counts[l] for l in langs], dtype=np.float64)
  if (n <= 0).any():
    empty = [l for l in langs if counts[l] <= 0]
    raise UserError(f"no sentences for language(s) {empty}; give them text or remove them from the language list.")
  p = (n / n.sum()) ** alpha
  p /= p.sum()
  return dict(zip(langs, p.tolist()))


TextSource = Union[Callable[[], Iterable[str]], Sequence[Union[str, os.PathLike]]]


def _opener(source: TextSource) -> Callable[[], Iterator[str]]:
  """A callable giving a fresh line iterator, from either such a callable or a list of files."""
  if callable(source):
    return lambda: iter(source())
  paths = list(source)
  for p in paths:
    if not os.path.exists(p):
      raise UserError(f"corpus file {os.fspath(p)!r} does not exist.")
  return lambda: itertools.chain.from_iterable(read_lines(p) for p in paths)


def balanced_sample(texts: Mapping[str, TextSource], alpha: float, n_sentences: int, seed: int) -> Iterator[str]:
  """Stream sentences so that language l makes up a share p_l ~ n_l**alpha of `n_sentences`.

  `texts` maps a language to its files or to a callable opening its lines. Two streaming passes (count, then
  pick), so memory holds only the chosen line numbers. Small languages are sampled with replacement (their lines
  repeat), large ones without, as the XLM authors did for their BPE.
  """
  openers = {lang: _opener(src) for lang, src in texts.items()}
  counts = {lang: sum(1 for _ in open_()) for lang, open_ in openers.items()}
  probs = language_sampling_probs(counts, alpha)
  rng = np.random.default_rng(seed)
  total = min(n_sentences, sum(counts.values())) if n_sentences > 0 else sum(counts.values())
  for lang in sorted(openers):
    want = int(round(total * probs[lang]))
    n = counts[lang]
    picks = rng.choice(n, size=want, replace=want > n)
    multiplicity = np.bincount(picks, minlength=n)
    for index, line in enumerate(openers[lang]()):
      for _ in range(int(multiplicity[index])):
        yield line


def train_sentencepiece(files: Mapping[str, TextSource], vocab_size: int, *, alpha: float = 0.5,
                        n_sentences: int = 1_000_000, seed: int = 0, character_coverage: float = 1.0,
                        byte_fallback: bool = False) -> SentencePieceTokenizer:
  """Train the shared BPE vocabulary on text from several languages.

  Args:
    files: language code -> text files (one sentence per line, `.gz` allowed), or a callable opening its lines.
    vocab_size: size of the whole vocabulary, specials and language tags included.
    alpha: language sampling exponent, p_l ~ n_l**alpha; XLM uses 0.5 for its BPE data.
    n_sentences: how many sentences to sample in total (<= 0: as many as the corpus has).
  """
  languages = sorted(files)
  for source in files.values():
    _opener(source)  # missing files fail here, before training
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=balanced_sample(files, alpha, n_sentences, seed), model_writer=model,
        model_type="bpe", vocab_size=vocab_size, character_coverage=character_coverage,
        bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID, unk_id=UNK_ID,
        bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>", unk_piece="<unk>",
        control_symbols=["<special0>", "<mask>", *(lang_tag(l) for l in languages)],
        byte_fallback=byte_fallback, num_threads=1, minloglevel=2,
        max_sentence_length=1 << 14, hard_vocab_limit=True)
  except RuntimeError as e:
    raise UserError(f"sentencepiece could not train a {vocab_size}-token vocabulary on {languages}: {e}. "
                    "Lower data.vocab_size or give more text.") from None
  return SentencePieceTokenizer(model.getvalue(), languages)
