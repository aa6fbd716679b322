"""The tokenizer of the published XLM models: Moses pre-processing, optional lowercasing/accent removal, BPE merges.

This is the second implementation of `xlm_jax.tokenizer.Tokenizer` (kind "xlm_bpe"), next to our sentencepiece
model. It reproduces, id for id, what `transformers.XLMTokenizer` (5.24) does in its language-aware `_tokenize`:

  1. split the text on the special pieces (`<s>`, `</s>`, `<pad>`, `<unk>`, `<special0..9>`), which map to their
     ids directly (our extension: the literal `<mask>` maps to the mask id too, as in our sentencepiece tokenizer,
     so `Bundle.fill_mask` works; transformers would split `<mask>` into `<`, `mask`, `>`);
  2. per remaining chunk: replace CJK/full-width punctuation, Moses punctuation normalisation for the language,
     drop non-printing characters (Unicode category C*), Sennrich's Romanian normalisation when lang == "ro",
     Moses tokenisation for the language (no HTML escaping);
  3. when `do_lowercase_and_remove_accent`: lowercase, NFD, drop combining marks (category Mn), lowercase again;
  4. BPE: a word is its characters with `</w>` glued to the last one; the adjacent pair with the lowest merge rank
     is merged everywhere (left to right) until no ranked pair is left; pieces not in the vocabulary become <unk>.

Traps:
- Framing: transformers frames with `<s> X </s>` (`build_inputs_with_special_tokens`); XLM, and `xlm_jax`, with
  `</s> X </s>` (`xlm_jax.tokenizer.frame`). `encode` returns unframed ids.
- transformers 5.24 drops the `lang` argument of `XLMTokenizer.tokenize()/encode()` (the base class does not pass
  keyword arguments to `_tokenize`), so through the public API every language is tokenised as English. We follow
  the language-aware `_tokenize(text, lang=...)`, which is what XLM's own preprocessing did.
- `merges.txt` is read as transformers reads it: `text.split("\\n")[:-1]`, so a file without a final newline loses
  its last merge, and a pair listed twice keeps its later rank. fastBPE `codes` files ("a b count") are the same
  format (transformers ignores the count); `codes` read with `read_codes` keep every line.
- Chinese, Thai and Japanese used external word segmenters (Stanford/jieba, pythainlp, KyTea) that are not part of
  xlm_jax: `encode` refuses those languages rather than silently producing different ids.
- Bundles imported from an original `.pth` checkpoint carry the vocabulary (the checkpoint's dico) but no merges
  unless `--codes` was given; such a tokenizer decodes ids but refuses to encode text.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from typing import Iterable, Mapping, Sequence

from xlm_jax.errors import UserError

KIND = "xlm_bpe"
DEFAULT_SPECIALS = ("<s>", "</s>", "<pad>", "<unk>", *(f"<special{i}>" for i in range(10)))
DEFAULT_ROLES = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>", "mask": "<special1>"}
OUR_MASK_LITERAL = "<mask>"
CUSTOM_SEGMENTERS = {"zh": "a Chinese word segmenter (Stanford segmenter in XLM, jieba in transformers)",
                     "th": "the PyThaiNLP Thai word segmenter", "ja": "the KyTea Japanese word segmenter"}
ROMANIAN_LANGS = ("ro",)
END_OF_WORD = "</w>"
# The pre-processing this module implements, stored in every state so a bundle cannot be read with other rules.
MOSES_SETTINGS = {"escape": False, "punct_norm": True, "replace_unicode_punct": True, "remove_non_printing": True,
                  "romanian_normalisation": list(ROMANIAN_LANGS), "refused_languages": sorted(CUSTOM_SEGMENTERS)}

# Moses' replace-unicode-punctuation.perl as XLM applies it; two entries also swallow the whitespace that follows.
_PUNCT_TABLE = str.maketrans({
    "，": ",", "、": ",", "”": '"', "“": '"', "∶": ":", "：": ":", "？": "?", "《": '"', "》": '"', "）": ")",
    "！": "!", "（": "(", "；": ";", "」": '"', "「": '"', "～": "~", "’": "'", "…": "...", "━": "-", "〈": "<",
    "〉": ">", "【": "[", "】": "]", "％": "%",
    **{chr(0xFF10 + d): str(d) for d in range(10)},  # full-width digits
})
_FULL_STOPS = re.compile(r"[。．]\s*")


def replace_unicode_punct(text: str) -> str:
  """CJK / full-width punctuation to ASCII (Moses `replace-unicode-punctuation.perl`)."""
  return _FULL_STOPS.sub(". ", text).translate(_PUNCT_TABLE)


def remove_non_printing(text: str) -> str:
  """Drop every character of Unicode category C* (controls, format characters such as U+200B, unassigned)."""
  return "".join(c for c in text if not unicodedata.category(c).startswith("C"))


def romanian_normalise(text: str) -> str:
  """Sennrich's WMT16 Romanian scripts: cedilla S/T to comma forms, then strip ș ț ă â î to ASCII."""
  for src, dst in (("\u015e", "S"), ("\u015f", "s"), ("\u0162", "T"), ("\u0163", "t"), ("\u0218", "S"),
                   ("\u0219", "s"), ("\u021a", "T"), ("\u021b", "t"), ("\u0102", "A"), ("\u0103", "a"),
                   ("\u00c2", "A"), ("\u00e2", "a"), ("\u00ce", "I"), ("\u00ee", "i")):
    text = text.replace(src, dst)
  return text


def lowercase_and_remove_accent(word: str) -> str:
  """XLM's `lowercase_and_remove_accent.py` on one token: lower, NFD, drop combining marks (Mn), lower."""
  decomposed = unicodedata.normalize("NFD", word.lower())
  return "".join(c for c in decomposed if unicodedata.category(c) != "Mn").lower()


def parse_merges(text: str, *, transformers_quirks: bool = True) -> list[tuple[str, str]]:
  """Merge pairs in rank order from `merges.txt` / fastBPE `codes` text ("a b [count]" per line).

  With `transformers_quirks` the text is split as `XLMTokenizer` does (`split("\\n")[:-1]`: the part after the
  last newline is dropped) and lines with fewer than two fields keep their rank slot; a repeated pair keeps its
  later rank. Without it every non-empty line counts (fastBPE's reading of a codes file).
  """
  lines = text.split("\n")[:-1] if transformers_quirks else text.splitlines()
  ranks: dict[tuple[str, str], int] = {}
  for rank, line in enumerate(lines):
    fields = line.split()
    if len(fields) >= 2:
      ranks[(fields[0], fields[1])] = rank
  return [pair for pair, _ in sorted(ranks.items(), key=lambda kv: kv[1])]


def xlm_dico_to_vocab(id2word: Mapping[int, str], n_specials: int = 14) -> list[str]:
  """The vocabulary (id -> piece) transformers builds from an original XLM dictionary (fastBPE '@@' style).

  A piece with '@@' (word continues) loses it; any other piece past the 14 specials gains '</w>' (word ends).
  """
  n = len(id2word)
  missing = [i for i in range(n) if i not in id2word]
  if missing:
    raise UserError(f"the checkpoint's dico_id2word has {n} entries but no id {missing[0]}; it is damaged.")
  out = []
  for i in range(n):
    word = str(id2word[i])
    if "@@" in word:
      out.append(word.replace("@@", ""))
    elif i >= n_specials:
      out.append(word + END_OF_WORD)
    else:
      out.append(word)
  return out


class XLMBPETokenizer:
  """XLM's BPE tokenizer (vocab + merges + normalisation flags), equal in ids to transformers' `XLMTokenizer`.

  Build one with `from_hf_files`, `from_xlm_dico` or `from_state`; `state()` is JSON-able and self-contained.
  """

  kind = KIND

  def __init__(self, vocab: Sequence[str], merges: Sequence[Sequence[str]] | None, *,
               do_lowercase_and_remove_accent: bool = True, languages: Sequence[str] = (),
               special_pieces: Sequence[str] = DEFAULT_SPECIALS, roles: Mapping[str, str] | None = None,
               source: str = ""):
    self.vocab = [str(p) for p in vocab]
    # A piece listed twice (possible after the '@@' rewrite of an XLM dico) maps to its last id, as in the dict
    # transformers' converter builds; the earlier id still decodes.
    self.piece_to_id_map = {p: i for i, p in enumerate(self.vocab)}
    self.merges = None if merges is None else [(str(a), str(b)) for a, b in merges]
    self.ranks = None if self.merges is None else {pair: r for r, pair in enumerate(self.merges)}
    self.do_lowercase_and_remove_accent = bool(do_lowercase_and_remove_accent)
    self.languages = tuple(languages)
    self.roles = dict(DEFAULT_ROLES if roles is None else roles)
    self.source = source
    for role in ("bos", "eos", "pad", "unk", "mask"):
      piece = self.roles.get(role)
      if piece not in self.piece_to_id_map:
        raise UserError(f"the vocabulary has no {role} piece {piece!r}; an XLM vocabulary starts with "
                        "<s> </s> <pad> <unk> <special0> ... <special9> (ids 0-13).")
    self.special_pieces = tuple(sorted({p for p in special_pieces if p in self.piece_to_id_map},
                                       key=self.piece_to_id_map.__getitem__))
    self.vocab_size = len(self.vocab)
    self.bos_id = self.piece_to_id_map[self.roles["bos"]]
    self.eos_id = self.piece_to_id_map[self.roles["eos"]]
    self.pad_id = self.piece_to_id_map[self.roles["pad"]]
    self.unk_id = self.piece_to_id_map[self.roles["unk"]]
    self.mask_id = self.piece_to_id_map[self.roles["mask"]]
    literals = {p: self.piece_to_id_map[p] for p in self.special_pieces}
    literals.setdefault(OUR_MASK_LITERAL, self.mask_id)
    self._literal_ids = literals
    # Longest first so that a special that is a prefix of another never wins (transformers' trie is leftmost-longest).
    self._special_re = re.compile("(" + "|".join(re.escape(p) for p in sorted(literals, key=len, reverse=True))
                                  + ")")
    self._drop_on_decode = {self.piece_to_id_map[p] for p in self.special_pieces} - {self.unk_id}
    self._moses: dict = {}
    self.bpe = functools.lru_cache(maxsize=1 << 16)(self._bpe)

  # ----------------------------------------------------------------------------------------------------- building
  @classmethod
  def from_hf_files(cls, vocab_json: str, merges_txt: str, *, do_lowercase_and_remove_accent: bool = True,
                    languages: Sequence[str] = (), tokenizer_config: Mapping | None = None) -> "XLMBPETokenizer":
    """From transformers' `vocab.json` ({piece: id}, ids 0..V-1) and `merges.txt`."""
    try:
      with open(vocab_json, encoding="utf-8") as f:
        mapping = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      raise UserError(f"cannot read the vocabulary {vocab_json!r}: {e}; it should be a JSON object "
                      "{piece: id} (transformers' vocab.json).") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
      raise UserError(f"{vocab_json!r} is not a JSON object {{piece: integer id}}.")
    vocab = vocab_from_mapping(mapping, vocab_json)
    try:
      with open(merges_txt, encoding="utf-8") as f:
        merges = parse_merges(f.read())
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(f"cannot read the BPE merges {merges_txt!r}: {e}.") from None
    specials, roles = _specials_from_tokenizer_config(tokenizer_config or {})
    return cls(vocab, merges, do_lowercase_and_remove_accent=do_lowercase_and_remove_accent, languages=languages,
               special_pieces=specials, roles=roles, source="transformers vocab.json + merges.txt")

  @classmethod
  def from_xlm_dico(cls, id2word: Mapping[int, str], codes: Iterable[tuple[str, str]] | None, *,
                    do_lowercase_and_remove_accent: bool = True,
                    languages: Sequence[str] = ()) -> "XLMBPETokenizer":
    """From an original XLM checkpoint's `dico_id2word` (and, optionally, the fastBPE codes it was built with)."""
    return cls(xlm_dico_to_vocab(id2word), None if codes is None else list(codes),
               do_lowercase_and_remove_accent=do_lowercase_and_remove_accent, languages=languages,
               source="original XLM checkpoint dico" + (" + fastBPE codes" if codes is not None else ""))

  @classmethod
  def from_state(cls, state: Mapping) -> "XLMBPETokenizer":
    if state.get("kind") != KIND:
      raise UserError(f"tokenizer state of kind {state.get('kind')!r} is not {KIND!r}.")
    if "moses" in state and state["moses"] != MOSES_SETTINGS:
      raise UserError(f"the bundle's XLM tokenizer uses Moses settings {state['moses']}, but this version of "
                      f"xlm_jax implements {MOSES_SETTINGS}; use the xlm_jax version that wrote the bundle.")
    return cls(state["vocab"], state.get("merges"),
               do_lowercase_and_remove_accent=state["do_lowercase_and_remove_accent"],
               languages=state.get("languages", ()), special_pieces=state.get("special_pieces", DEFAULT_SPECIALS),
               roles=state.get("roles"), source=state.get("source", ""))

  def state(self) -> dict:
    return {"kind": KIND, "vocab": list(self.vocab), "merges": None if self.merges is None else
            [list(p) for p in self.merges], "do_lowercase_and_remove_accent": self.do_lowercase_and_remove_accent,
            "languages": list(self.languages), "special_pieces": list(self.special_pieces), "roles": dict(self.roles),
            "moses": dict(MOSES_SETTINGS),
            "source": self.source}

  def fingerprint(self) -> str:
    state = self.state()
    state.pop("source")
    return hashlib.sha256(json.dumps(state, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]

  @property
  def can_encode(self) -> bool:
    return self.merges is not None

  # ----------------------------------------------------------------------------------------------------- encoding
  def _moses_tools(self, lang: str):
    tools = self._moses.get(lang)
    if tools is None:
      try:
        import sacremoses
      except ImportError:
        raise UserError("the XLM tokenizer needs the sacremoses package: pip install sacremoses==0.2.0") from None
      tools = (sacremoses.MosesPunctNormalizer(lang=lang), sacremoses.MosesTokenizer(lang=lang))
      self._moses[lang] = tools
    return tools

  def pretokenize(self, text: str, lang: str | None = None) -> list[str]:
    """Words of one chunk of text (no special pieces in it) after Moses and normalisation, before BPE."""
    lang = lang or "en"
    if lang in CUSTOM_SEGMENTERS:
      raise UserError(f"encoding {lang!r} text needs {CUSTOM_SEGMENTERS[lang]}, which xlm_jax does not include; "
                      "segment the text into space-separated words with that tool first, or pass token ids.")
    normaliser, tokenizer = self._moses_tools(lang)
    text = remove_non_printing(normaliser.normalize(replace_unicode_punct(text)))
    if lang in ROMANIAN_LANGS:
      text = romanian_normalise(text)
    words = tokenizer.tokenize(text, return_str=False, escape=False)
    if self.do_lowercase_and_remove_accent:
      words = [lowercase_and_remove_accent(w) for w in words]
    return [w for w in words if w]

  def _bpe(self, word: str) -> tuple[str, ...]:
    symbols = [*word[:-1], word[-1] + END_OF_WORD]
    ranks = self.ranks
    while len(symbols) > 1:
      best, best_rank = None, None
      for pair in zip(symbols, symbols[1:]):
        r = ranks.get(pair)
        if r is not None and (best_rank is None or r < best_rank):
          best, best_rank = pair, r
      if best is None:
        break
      first, second = best
      merged, i = [], 0
      while i < len(symbols):
        if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    return tuple(symbols)

  def tokenize(self, text: str, lang: str | None = None) -> list[str]:
    """BPE pieces of `text` (special pieces kept whole)."""
    if self.merges is None:
      raise UserError("this tokenizer has the model's vocabulary but no BPE merges (it was imported from an "
                      "original XLM .pth without --codes), so it cannot encode text: re-run `python -m "
                      "xlm_jax.convert from-xlm FILE.pth OUT_DIR --codes CODES` with the model's fastBPE codes, "
                      "or pass token ids.")
    pieces: list[str] = []
    for chunk in self._special_re.split(text):
      if not chunk:
        continue
      if chunk in self._literal_ids:
        pieces.append(chunk)
        continue
      for word in self.pretokenize(chunk, lang):
        pieces.extend(self.bpe(word))
    return pieces

  def encode(self, text: str, lang: str | None = None) -> list[int]:
    """Token ids of one sentence, without framing (`frame` adds `</s> ... </s>`). `lang` defaults to "en"."""
    ids = []
    for piece in self.tokenize(text, lang):
      literal = self._literal_ids.get(piece)
      ids.append(literal if literal is not None else self.piece_to_id_map.get(piece, self.unk_id))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """Pieces joined, `</w>` read as a word end (tokenised, and lowercased for lowercasing models); special ids
    other than <unk> are dropped."""
    pieces = [self.vocab[int(i)] for i in ids if int(i) not in self._drop_on_decode and 0 <= int(i) < self.vocab_size]
    return "".join(pieces).replace(END_OF_WORD, " ").strip()

  def id_to_piece(self, i: int) -> str:
    return self.vocab[int(i)]

  def piece_to_id(self, piece: str) -> int:
    return self.piece_to_id_map.get(piece, self.unk_id)

  # ------------------------------------------------------------------------------------------------ HF export
  def hf_vocab(self) -> dict[str, int]:
    return {p: i for i, p in enumerate(self.vocab)}

  def hf_merges_text(self) -> str:
    """merges.txt as transformers reads it back (one "a b" per line, final newline so no merge is dropped)."""
    return "".join(f"{a} {b}\n" for a, b in (self.merges or ()))


def vocab_from_mapping(mapping: Mapping[str, int], where: str) -> list[str]:
  """{piece: id} -> [piece by id]; the ids must be exactly 0..V-1."""
  n = len(mapping)
  by_id: dict[int, str] = {}
  for piece, i in mapping.items():
    if i in by_id:
      raise UserError(f"{where}: pieces {by_id[i]!r} and {piece!r} both have id {i}; the vocabulary is damaged.")
    by_id[i] = piece
  bad = sorted(i for i in by_id if not 0 <= i < n)
  if bad:
    raise UserError(f"{where}: {n} pieces but id {bad[0]} is outside 0..{n - 1}; the ids must be 0..V-1 without "
                    "gaps.")
  return [by_id[i] for i in range(n)]


def _content(token) -> str | None:
  if isinstance(token, Mapping):
    return token.get("content")
  return token if isinstance(token, str) else None


def _specials_from_tokenizer_config(cfg: Mapping) -> tuple[tuple[str, ...], dict[str, str]]:
  """Special pieces and roles from a transformers `tokenizer_config.json` (defaults: XLMTokenizer's)."""
  roles = dict(DEFAULT_ROLES)
  for role, key in (("bos", "bos_token"), ("eos", "sep_token"), ("pad", "pad_token"), ("unk", "unk_token"),
                    ("mask", "mask_token")):
    value = _content(cfg.get(key))
    if value:
      roles[role] = value
  specials = [roles["bos"], roles["eos"], roles["pad"], roles["unk"], roles["mask"]]
  cls_token = _content(cfg.get("cls_token")) or "</s>"
  specials.append(cls_token)
  extra = cfg.get("additional_special_tokens", cfg.get("extra_special_tokens"))
  if isinstance(extra, (list, tuple)):
    specials.extend(c for c in (_content(t) for t in extra) if c)
  else:
    specials.extend(DEFAULT_SPECIALS[4:])
  decoder = cfg.get("added_tokens_decoder")
  if isinstance(decoder, Mapping):
    specials.extend(c for c in (_content(t) for t in decoder.values()) if c)
  return tuple(dict.fromkeys(specials)), roles
