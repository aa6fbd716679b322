"""A deterministic synthetic multilingual corpus: the project's default data for the demo and the tests.

Three artificial languages (`xa`, `xb`, `xc`) express the same *meanings* with their own vocabularies, morphology
and word order:

- `xa`: CV-heavy ASCII words; SVO; adjectives after the noun, numerals before it; prepositions; plural suffix `-s`;
  tense suffixes (`-ta` past, `-ku` future) plus subject-number agreement on the verb; questions start with `ka`.
- `xb`: consonant clusters and the letters ø æ å é; SOV with the location before the object; numerals and
  adjectives before the noun; postpositions; plural prefix `ve-`, object suffix `-et`, locative suffix `-å`; tense
  prefixes (`ge-` past, `så-` future); questions end with the particle `nø`; conjunctions close the first clause.
- `xc`: agglutinative, long vowels and ş ç; VSO; three noun classes whose class-and-number suffix (`-ni/-nir`,
  `-ka/-kar`, `-şe/-şer`) is repeated on every agreeing adjective; a tense particle before the verb (`saa`, `mii`,
  `ruu`); a plural-subject suffix and a question suffix on the verb.

Rendering a meaning is a pure function of (meaning, language), and it is injective within each language (no two
meanings share a sentence), so translation is learnable in both directions. Agreement and case make masked words
predictable from context (MLM/TLM). Concept frequencies are Zipf-like and frequent words are short.

Content words follow from their neighbours, as in real text: every sentence is about one of `N_TOPICS` topics, and
its agents, places, adjectives and verbs come from that topic's share of the vocabulary (with probability
`P_ON_TOPIC`; concept c belongs to topic c mod N_TOPICS); a verb selects its patients (a transitive verb takes
objects of its own topic and of its own class, `P_SELECTED`) and its adverb (`P_VERB_ADVERB`). Without this, a
masked noun or verb could only be guessed from word frequencies and masked-LM accuracy stayed at the unigram
baseline. And like real neighbours, the languages share words: a third of the content concepts are cognates
(`is_cognate`), whose stem in every language is xa's, inflected by each language's own morphology; a shared
subword vocabulary (XLM's BPE) then lets the translation in a TLM row point at the masked word.

Further languages are cheap: any two- or three-letter lowercase code other than the three above (`xd`, `xe`, ... see
`language_codes`) gets a language spec derived deterministically from its code (phonology, orders, affixes).

Determinism: every random choice comes from `np.random.Generator.random()` on a PCG64 stream seeded through
`SeedSequence` with integers derived by SHA-256 from fixed labels, so the lexicons and corpora are identical on every
machine and Python version (Python's `hash()` is never used).

`generate_corpus` writes the XLM-style local-folder layout (one sentence per line, UTF-8, newline-terminated):
`{split}.{lang}` for monolingual text and `{split}.{l1}-{l2}.{l1}` / `{split}.{l1}-{l2}.{l2}` (l1 < l2) for
sentence-aligned parallel text, plus `manifest.json`.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Literal, Mapping, NamedTuple, Sequence

import numpy as np

from xlm_jax.errors import UserError

GENERATOR_VERSION = 2
"""Bumped whenever the output for a given (seed, sizes) changes; recorded in the manifest."""

LANGUAGES: tuple[str, ...] = ("xa", "xb", "xc")
"""The built-in languages (hand-designed specs). Other codes get derived specs, see `language_spec`."""

SPLITS: tuple[str, ...] = ("train", "valid", "test")
MANIFEST_NAME = "manifest.json"

# ----------------------------------------------------------------------------------------------------------------
# Concept inventory (language independent). Concepts are integer ids; a lower id within a category is a more
# frequent concept (Zipf rank).

N_ANIMATE, N_OBJECT, N_PLACE = 60, 110, 30
N_NOUNS = N_ANIMATE + N_OBJECT + N_PLACE  # animate: [0, 60), objects: [60, 170), places: [170, 200)
N_TRANSITIVE, N_INTRANSITIVE = 36, 14
N_VERBS = N_TRANSITIVE + N_INTRANSITIVE  # transitive verbs first
N_ADJECTIVES = 40
N_ADVERBS = 12
N_ADPOSITIONS = 16
NUMERAL_VALUES: tuple[int, ...] = tuple(range(2, 11))
N_CONJUNCTIONS = 4
N_NOUN_CLASSES = 3

Tense = Literal["past", "present", "future"]
TENSES: tuple[str, ...] = ("past", "present", "future")
_TENSE_INDEX = {t: i for i, t in enumerate(TENSES)}

# Grammatical roles of a noun phrase (index into a language's case suffixes).
AGENT, PATIENT, OBLIQUE = 0, 1, 2

CATEGORIES: tuple[str, ...] = ("conjunction", "adposition", "numeral", "adverb", "verb", "adjective", "noun")
_CATEGORY_SIZES = MappingProxyType({
    "conjunction": N_CONJUNCTIONS, "adposition": N_ADPOSITIONS, "numeral": len(NUMERAL_VALUES),
    "adverb": N_ADVERBS, "verb": N_VERBS, "adjective": N_ADJECTIVES, "noun": N_NOUNS})


def noun_class(noun: int) -> int:
  """Grammatical class of a noun concept, used by languages with agreement: animates are class 0, places class 2,
  objects are split between classes 1 and 2 arbitrarily (by id parity), as in real gender systems."""
  if noun < N_ANIMATE:
    return 0
  if noun < N_ANIMATE + N_OBJECT and noun % 2 == 0:
    return 1
  return 2


def is_transitive(verb: int) -> bool:
  """Whether a verb concept takes a patient (sampled meanings have a patient exactly when it does)."""
  return verb < N_TRANSITIVE


_NOUN_CLASS: tuple[int, ...] = tuple(noun_class(c) for c in range(N_NOUNS))
CONTENT_CATEGORIES: tuple[str, ...] = ("noun", "verb", "adjective", "adverb")


def is_cognate(category: str, concept: int) -> bool:
  """Whether a concept's stem is shared by all languages (xa's stem, each language's inflection): a third of the
  content concepts, spread over frequencies."""
  return category in CONTENT_CATEGORIES and concept % 3 == 1


# ----------------------------------------------------------------------------------------------------------------
# Meanings


class NounPhrase(NamedTuple):
  """A noun concept with number, 0-2 adjective concepts (ascending ids) and an optional numeral value (plural only)."""
  noun: int
  plural: bool = False
  adjectives: tuple[int, ...] = ()
  numeral: int | None = None


class Location(NamedTuple):
  """An adpositional phrase: adposition concept + noun phrase (sampled ones use place nouns)."""
  adposition: int
  place: NounPhrase


class Clause(NamedTuple):
  """Agent does verb (in a tense) to an optional patient, at an optional location, in an optional manner."""
  agent: NounPhrase
  verb: int
  tense: Tense = "present"
  patient: NounPhrase | None = None
  location: Location | None = None
  adverb: int | None = None


class Meaning(NamedTuple):
  """One sentence meaning: 1-3 clauses joined by len(clauses) - 1 conjunction concepts; optionally a yes/no question.

  Meanings are hashable and compare by value, so they can be deduplicated across splits."""
  clauses: tuple[Clause, ...]
  conjunctions: tuple[int, ...] = ()
  question: bool = False


def validate_meaning(meaning: Meaning) -> None:
  """Raise `UserError` unless `meaning` is well formed (ids in range, known tense, numerals only on plurals)."""
  def check_id(kind: str, value: object, size: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= value < size:
      raise UserError(f"invalid {kind} id {value!r} in meaning (expected an int in [0, {size})).")

  def check_np(np_: NounPhrase) -> None:
    check_id("noun", np_.noun, N_NOUNS)
    if len(np_.adjectives) > 2:
      raise UserError(f"a noun phrase has at most 2 adjectives, got {np_.adjectives!r}.")
    for a in np_.adjectives:
      check_id("adjective", a, N_ADJECTIVES)
    if np_.numeral is not None and (not np_.plural or np_.numeral not in NUMERAL_VALUES):
      raise UserError(f"numeral {np_.numeral!r} needs a plural noun phrase and a value in {NUMERAL_VALUES}.")

  if not isinstance(meaning, Meaning) or not 1 <= len(meaning.clauses) <= 3:
    raise UserError(f"expected a Meaning with 1-3 clauses, got {meaning!r}.")
  if len(meaning.conjunctions) != len(meaning.clauses) - 1:
    raise UserError(f"a meaning with {len(meaning.clauses)} clauses needs {len(meaning.clauses) - 1} conjunctions.")
  for c in meaning.conjunctions:
    check_id("conjunction", c, N_CONJUNCTIONS)
  for clause in meaning.clauses:
    check_np(clause.agent)
    check_id("verb", clause.verb, N_VERBS)
    if clause.tense not in _TENSE_INDEX:
      raise UserError(f"unknown tense {clause.tense!r}; expected one of {TENSES}.")
    if clause.patient is not None:
      check_np(clause.patient)
    if clause.location is not None:
      check_id("adposition", clause.location.adposition, N_ADPOSITIONS)
      check_np(clause.location.place)
    if clause.adverb is not None:
      check_id("adverb", clause.adverb, N_ADVERBS)


# ----------------------------------------------------------------------------------------------------------------
# Meaning sampler. Only `Generator.random()` is used (its stream is the most stable across numpy versions); every
# discrete choice is an inverse-CDF lookup.

P_CLAUSES = (0.6, 0.4)             # 1 or 2 clauses (a TLM pair of two 2-clause sentences fits bptt=128)
P_QUESTION = 0.12                  # single-clause meanings only
P_PLURAL = 0.3
P_ADJECTIVES = (0.4, 0.38, 0.22)   # 0, 1 or 2 adjectives
P_NUMERAL = 0.3                    # given plural
P_LOCATION = 0.5
P_ADVERB = 0.3
P_ANIMATE_PATIENT = 0.25
N_TOPICS = 8                       # topics a sentence is about; concept c belongs to topic c % N_TOPICS
P_ON_TOPIC = 0.9                   # a content word comes from the sentence's topic (else from the whole category)
N_VERB_CLASSES = 3                 # a transitive verb takes objects of its class: (object rank // topics) % classes
P_SELECTED = 0.85                  # the patient obeys its verb's selection (else any object of the topic)
P_VERB_ADVERB = 0.8                # an adverb, when there is one, is the verb's usual one (verb % N_ADVERBS)
_CHUNK = 256  # meanings are drawn in fixed-size chunks, so a smaller request is a prefix of a bigger one


def _frozen(a: np.ndarray) -> np.ndarray:
  a.flags.writeable = False
  return a


def _cdf(weights: Sequence[float] | np.ndarray) -> np.ndarray:
  w = np.asarray(weights, dtype=np.float64)
  return _frozen(np.cumsum(w) / w.sum())


def _zipf_cdf(n: int, exponent: float = 1.05, offset: float = 2.0) -> np.ndarray:
  """Zipf-Mandelbrot distribution over ranks 0..n-1: p(r) proportional to 1 / (r + offset) ** exponent."""
  return _cdf(1.0 / (np.arange(n) + offset) ** exponent)


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
  """Inverse-CDF sampling: index i with probability cdf[i] - cdf[i-1], for uniforms `u` in [0, 1)."""
  return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


_CLAUSES_CDF = _cdf(P_CLAUSES)
_ADJ_COUNT_CDF = _cdf(P_ADJECTIVES)
_ANIMATE_CDF = _zipf_cdf(N_ANIMATE)
_OBJECT_CDF = _zipf_cdf(N_OBJECT)
_PLACE_CDF = _zipf_cdf(N_PLACE)
_VERB_CDF = _zipf_cdf(N_VERBS)
_ADJ_CDF = _zipf_cdf(N_ADJECTIVES)
_ADVERB_CDF = _zipf_cdf(N_ADVERBS)
_ADPOSITION_CDF = _zipf_cdf(N_ADPOSITIONS, exponent=0.9)
_NUMERAL_CDF = _zipf_cdf(len(NUMERAL_VALUES), exponent=1.2, offset=1.0)
_CONJ_CDF = _zipf_cdf(N_CONJUNCTIONS, exponent=1.0, offset=1.0)


@functools.lru_cache(maxsize=None)
def _topic_cdf(n: int, modulus: int, exponent: float = 1.05, offset: float = 2.0) -> np.ndarray:
  """Zipf over the ranks 0, modulus, 2*modulus, ... below n (the members of one topic, relative to its first)."""
  return _zipf_cdf(-(-n // modulus), exponent, offset)


def _on_topic(rng: np.random.Generator, topics: np.ndarray, n: int, cdf: np.ndarray,
              modulus: int = N_TOPICS, residue: np.ndarray | None = None, p: float = P_ON_TOPIC) -> np.ndarray:
  """Concept ranks in [0, n): with probability `p` one of `topics`' own (rank % modulus == topic, Zipf within the
  topic; `residue` further restricts rank // modulus to that residue mod N_VERB_CLASSES), otherwise a draw from
  the whole category's Zipf `cdf`."""
  u = rng.random((len(topics), 3))
  free = _draw(cdf, u[:, 0])
  if residue is None:
    within = _draw(_topic_cdf(n, modulus), u[:, 1])
  else:
    within = residue + N_VERB_CLASSES * _draw(_topic_cdf(n, modulus * N_VERB_CLASSES), u[:, 1])
  ranks = topics + modulus * within
  return np.where((u[:, 2] < p) & (ranks < n), ranks, free)


def _sample_noun_phrases(rng: np.random.Generator, nouns: np.ndarray, topics: np.ndarray) -> list[NounPhrase]:
  """One noun phrase per given noun id: number, adjectives (of the sentence's topic) and numeral are drawn here."""
  u = rng.random((len(nouns), 5))
  plural = (u[:, 0] < P_PLURAL).tolist()
  n_adj = _draw(_ADJ_COUNT_CDF, u[:, 1]).tolist()
  adj1 = _on_topic(rng, topics, N_ADJECTIVES, _ADJ_CDF).tolist()
  adj2 = _on_topic(rng, topics, N_ADJECTIVES, _ADJ_CDF).tolist()
  numeral = np.where(u[:, 0] < P_PLURAL * P_NUMERAL,  # numeral only on plurals, with prob P_NUMERAL
                     np.asarray(NUMERAL_VALUES)[_draw(_NUMERAL_CDF, u[:, 4])], 0).tolist()
  out = []
  for noun, pl, k, a1, a2, num in zip(nouns.tolist(), plural, n_adj, adj1, adj2, numeral):
    adjectives = () if k == 0 else (a1,) if k == 1 or a1 == a2 else (min(a1, a2), max(a1, a2))
    out.append(NounPhrase(noun, pl, adjectives, num or None))
  return out


def _sample_chunk(rng: np.random.Generator, n: int) -> list[Meaning]:
  u = rng.random((n, 2))
  n_clauses_arr = _draw(_CLAUSES_CDF, u[:, 0]) + 1
  question = ((u[:, 1] < P_QUESTION) & (n_clauses_arr == 1)).tolist()
  n_clauses = n_clauses_arr.tolist()
  m = sum(n_clauses)
  topics = np.repeat(np.minimum((rng.random(n) * N_TOPICS).astype(np.int64), N_TOPICS - 1), n_clauses_arr)
  cu = rng.random((m, 8))
  verb_arr = _on_topic(rng, topics, N_VERBS, _VERB_CDF)
  verbs = verb_arr.tolist()
  tenses = np.minimum((cu[:, 1] * 3).astype(np.int64), 2).tolist()
  has_location = (cu[:, 2] < P_LOCATION).tolist()
  usual_adverb = np.where(cu[:, 0] < P_VERB_ADVERB, verb_arr % N_ADVERBS, _draw(_ADVERB_CDF, cu[:, 4]))
  adverbs = np.where(cu[:, 3] < P_ADVERB, usual_adverb, -1).tolist()
  adpositions = _draw(_ADPOSITION_CDF, cu[:, 5]).tolist()
  conjunctions = _draw(_CONJ_CDF, cu[:, 6]).tolist()
  selected = _on_topic(rng, topics, N_OBJECT, _OBJECT_CDF, residue=(verb_arr // N_TOPICS) % N_VERB_CLASSES,
                       p=P_SELECTED)
  patient_nouns = np.where(cu[:, 7] < P_ANIMATE_PATIENT, _on_topic(rng, topics, N_ANIMATE, _ANIMATE_CDF),
                           N_ANIMATE + selected)
  agents = _sample_noun_phrases(rng, _on_topic(rng, topics, N_ANIMATE, _ANIMATE_CDF), topics)
  patients = _sample_noun_phrases(rng, patient_nouns, topics)
  places = _sample_noun_phrases(rng, N_ANIMATE + N_OBJECT + _on_topic(rng, topics, N_PLACE, _PLACE_CDF), topics)

  clauses = [
      Clause(agent=agents[i], verb=verbs[i], tense=TENSES[tenses[i]],
             patient=patients[i] if is_transitive(verbs[i]) else None,
             location=Location(adpositions[i], places[i]) if has_location[i] else None,
             adverb=adverbs[i] if adverbs[i] >= 0 else None)
      for i in range(m)]
  out, start = [], 0
  for k, q in zip(n_clauses, question):
    out.append(Meaning(tuple(clauses[start:start + k]), tuple(conjunctions[start + 1:start + k]), q))
    start += k
  return out


def sample_meanings(rng: np.random.Generator, n: int) -> list[Meaning]:
  """Draw `n` independent sentence meanings from `rng` (Zipf-like concept frequencies).

  Deterministic given the generator state. Meanings are drawn in chunks of 256, so the first `k` meanings of a
  request for `n >= k` equal a request for `k` from the same state; the generator advances by whole chunks."""
  if n < 0:
    raise UserError(f"cannot sample a negative number of meanings ({n}).")
  out: list[Meaning] = []
  while len(out) < n:
    out.extend(_sample_chunk(rng, _CHUNK))
  return out[:n]


# ----------------------------------------------------------------------------------------------------------------
# Language specs


class Marker(NamedTuple):
  """A grammatical marker: `kind` says where `form` goes; an empty form means no marking.

  kinds: "prefix"/"suffix" (on the word), "before"/"after" (a separate particle word next to it), and for questions
  "initial"/"final" (a sentence-level particle) or "suffix" (on the first verb)."""
  kind: str
  form: str


@dataclasses.dataclass(frozen=True)
class Phonology:
  """Syllable inventory: a syllable is onset + nucleus + optional coda (with probability `coda_prob`); word-medial
  syllables use `medial_onsets` (never empty, so there is no vowel hiatus inside a stem). Repeated entries weigh
  more."""
  onsets: tuple[str, ...]
  medial_onsets: tuple[str, ...]
  nuclei: tuple[str, ...]
  codas: tuple[str, ...]
  coda_prob: float
  content_syllables: tuple[int, int]   # (min, max) for nouns, verbs, adjectives, adverbs
  function_syllables: tuple[int, int]  # (min, max) for adpositions, numerals, conjunctions


@dataclasses.dataclass(frozen=True)
class LanguageSpec:
  """Everything that makes a language: phonology, word orders and morphology.

  clause_order: a permutation of S (agent), V (verb with its particles), O (patient), L (location), A (adverb).
  np_order: a permutation of NUM, ADJ, N inside a noun phrase.
  conjunction_template: how two clauses join, with {0}, {c}, {1} for first clause, conjunction, second clause.
  class_suffixes: if set, per noun class a (singular, plural) suffix carried by the noun and every adjective
    agreeing with it (this then also marks number); otherwise plural_prefix/plural_suffix mark plural nouns.
  case_suffixes: suffix of the noun for (agent, patient, oblique) roles.
  tense_markers: one Marker per tense in TENSES order.
  """
  code: str
  description: str
  phonology: Phonology
  clause_order: tuple[str, ...]
  np_order: tuple[str, ...]
  postpositions: bool
  conjunction_template: str
  tense_markers: tuple[Marker, Marker, Marker]
  question: Marker
  plural_prefix: str = ""
  plural_suffix: str = ""
  class_suffixes: tuple[tuple[str, str], ...] | None = None
  case_suffixes: tuple[str, str, str] = ("", "", "")
  subject_plural_suffix: str = ""

  @property
  def word_order(self) -> str:
    """Basic order of S, V and O, e.g. "SVO"."""
    return "".join(s for s in self.clause_order if s in "SVO")

  def particles(self) -> frozenset[str]:
    """Free grammatical words of the language (tense and question particles)."""
    out = {m.form for m in self.tense_markers if m.kind in ("before", "after") and m.form}
    if self.question.kind in ("initial", "final"):
      out.add(self.question.form)
    return frozenset(out)


_XA = LanguageSpec(
    code="xa",
    description="CV-heavy ASCII; SVO; N-ADJ, NUM-N; prepositions; plural suffix; tense and subject-number suffixes "
                "on the verb; sentence-initial question particle.",
    phonology=Phonology(
        onsets=("p", "t", "k", "m", "n", "l", "s", "h", "w", "y", "b", "d", "g", "r", "t", "k", "m", "n", "l", ""),
        medial_onsets=("p", "t", "k", "m", "n", "l", "s", "h", "w", "y", "b", "d", "g", "r", "t", "k", "l", "n"),
        nuclei=("a", "e", "i", "o", "u", "a", "i", "o"),
        codas=("n",), coda_prob=0.06, content_syllables=(2, 3), function_syllables=(1, 2)),
    clause_order=("A", "S", "V", "O", "L"), np_order=("NUM", "N", "ADJ"), postpositions=False,
    conjunction_template="{0}, {c} {1}",
    tense_markers=(Marker("suffix", "ta"), Marker("suffix", ""), Marker("suffix", "ku")),
    question=Marker("initial", "ka"),
    plural_suffix="s", subject_plural_suffix="n")

_XB = LanguageSpec(
    code="xb",
    description="Consonant clusters and ø æ å é; SOV; NUM-ADJ-N; postpositions; plural prefix, object and locative "
                "case suffixes; tense prefixes; sentence-final question particle; clause-final conjunctions.",
    phonology=Phonology(
        onsets=("b", "d", "f", "g", "k", "p", "s", "t", "v", "br", "dr", "fr", "gr", "kr", "pr", "tr", "sk", "st",
                "sp", "skr", "str", "fl", "gl", "kl", "pl", "sl", "sn", "sv", "hv", "j", "m", "n", ""),
        medial_onsets=("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v"),
        nuclei=("a", "e", "i", "o", "u", "ø", "æ", "å", "y", "é", "a", "e", "ø", "o"),
        codas=("n", "r", "l", "s", "t", "k", "rt", "nd", "lk", "st", "rn", "sk", "ng", "m"),
        coda_prob=0.65, content_syllables=(1, 2), function_syllables=(1, 1)),
    clause_order=("S", "A", "L", "O", "V"), np_order=("NUM", "ADJ", "N"), postpositions=True,
    conjunction_template="{0} {c}, {1}",
    tense_markers=(Marker("prefix", "ge"), Marker("prefix", ""), Marker("prefix", "så")),
    question=Marker("final", "nø"),
    plural_prefix="ve", case_suffixes=("", "et", "å"))

_XC = LanguageSpec(
    code="xc",
    description="Agglutinative with long vowels and ş ç; VSO; N-ADJ-NUM; prepositions; three noun classes with "
                "class+number agreement suffixes on nouns and adjectives; tense particle before the verb; "
                "plural-subject and question suffixes on the verb.",
    phonology=Phonology(
        onsets=("", "b", "d", "g", "h", "k", "l", "m", "n", "r", "s", "t", "y", "z", "ş", "ç"),
        medial_onsets=("b", "d", "g", "h", "k", "l", "m", "n", "r", "s", "t", "y", "z", "ş", "ç"),
        nuclei=("a", "e", "i", "o", "u", "aa", "ee", "ii", "oo", "uu", "a", "i", "u"),
        codas=("n", "r", "l", "m", "ş"), coda_prob=0.2, content_syllables=(2, 3), function_syllables=(1, 2)),
    clause_order=("V", "S", "O", "L", "A"), np_order=("N", "ADJ", "NUM"), postpositions=False,
    conjunction_template="{0} {c} {1}",
    tense_markers=(Marker("before", "saa"), Marker("before", "mii"), Marker("before", "ruu")),
    question=Marker("suffix", "ko"),
    class_suffixes=(("ni", "nir"), ("ka", "kar"), ("şe", "şer")), subject_plural_suffix="nu")

_BUILTIN_SPECS = MappingProxyType({s.code: s for s in (_XA, _XB, _XC)})
_CODE_RE = re.compile(r"[a-z]{2,3}")


def language_codes(n: int) -> tuple[str, ...]:
  """The first `n` language codes: ('xa', 'xb', 'xc') then derived languages 'xd', 'xe', ... (n <= 26)."""
  if not 1 <= n <= 26:
    raise UserError(f"the number of synthetic languages must be in [1, 26], got {n}.")
  return tuple("x" + chr(ord("a") + i) for i in range(n))


def _labels_entropy(*labels: object) -> int:
  """A 128-bit integer derived from labels with SHA-256 (stable across machines, unlike `hash()`)."""
  digest = hashlib.sha256("\x1f".join(str(x) for x in labels).encode("utf-8")).digest()
  return int.from_bytes(digest[:16], "little")


def _stream(seed: int, *labels: object) -> np.random.Generator:
  """An independent random stream for (seed, labels)."""
  return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _labels_entropy(*labels)])))


def _pick(options: Sequence[str], u: float) -> str:
  return options[min(int(u * len(options)), len(options) - 1)]


def _derive_spec(code: str) -> LanguageSpec:
  """A random but fixed language spec for a non-built-in code (only `code` seeds it)."""
  rng = _stream(0, "xlm_jax.synthetic.spec", code)

  def subset(pool: Sequence[str], k: int) -> tuple[str, ...]:
    keys = rng.random(len(pool))
    return tuple(pool[i] for i in sorted(np.argsort(keys, kind="stable")[:k].tolist()))

  consonants = subset(("p", "t", "k", "b", "d", "g", "m", "n", "l", "r", "s", "f", "v", "h", "j", "w", "z", "ş",
                       "ç", "ñ", "ž", "x"), 12)
  vowels = subset(("a", "e", "i", "o", "u", "y", "ä", "ö", "ü", "ı", "à", "ê"), 6)
  codas = subset(("n", "m", "r", "l", "s", "k", "t"), 3)
  phon = Phonology(onsets=consonants + ("",), medial_onsets=consonants, nuclei=vowels, codas=codas,
                   coda_prob=0.3, content_syllables=(2, 3), function_syllables=(1, 2))
  used: set[str] = set()

  def affix() -> str:  # distinct one-syllable affixes keep every inflected form distinct
    while True:
      u = rng.random(4)
      s = _pick(consonants, u[0]) + _pick(vowels, u[1]) + (_pick(codas, u[3]) if u[2] < 0.3 else "")
      if s not in used:
        used.add(s)
        return s

  svo = _pick(("SVO", "SOV", "VSO", "VOS", "OSV", "OVS"), rng.random())
  order = list(svo)
  for slot in ("L", "A"):
    order.insert(min(int(rng.random() * (len(order) + 1)), len(order)), slot)
  np_order = _pick(list(itertools.permutations(("NUM", "ADJ", "N"))), rng.random())
  u = rng.random(8)
  agreement = u[0] < 0.35
  tense_kind = _pick(("prefix", "suffix", "before", "after"), u[1])
  tense_forms = [affix(), "" if tense_kind in ("prefix", "suffix") and u[2] < 0.5 else affix(), affix()]
  question = Marker(_pick(("initial", "final", "suffix"), u[3]), affix())
  class_suffixes = None
  plural_prefix = plural_suffix = ""
  if agreement:
    class_suffixes = tuple((s, s + _pick(vowels, rng.random())) for s in (affix(), affix(), affix()))
  elif u[4] < 0.5:
    plural_prefix = affix()
  else:
    plural_suffix = affix()
  case_suffixes = ("", affix(), "") if u[5] < 0.5 else ("", "", "")
  template = _pick(("{0} {c} {1}", "{0}, {c} {1}", "{0} {c}, {1}"), u[6])
  return LanguageSpec(
      code=code, description=f"derived from its code: {svo}, NP order {'-'.join(np_order)}",
      phonology=phon, clause_order=tuple(order), np_order=tuple(np_order), postpositions=bool(u[7] < 0.5),
      conjunction_template=template, tense_markers=tuple(Marker(tense_kind, f) for f in tense_forms),
      question=question, plural_prefix=plural_prefix, plural_suffix=plural_suffix, class_suffixes=class_suffixes,
      case_suffixes=case_suffixes, subject_plural_suffix=affix() if rng.random() < 0.5 else "")


@functools.lru_cache(maxsize=None)
def language_spec(code: str) -> LanguageSpec:
  """The spec of a language: built-in for 'xa', 'xb', 'xc', derived deterministically from the code for any other
  code of 2-3 lowercase ASCII letters. Raises `UserError` for anything else. (Cached: specs are immutable.)"""
  if not isinstance(code, str) or not _CODE_RE.fullmatch(code):
    raise UserError(f"unknown synthetic language {code!r}: use 2-3 lowercase letters, e.g. {LANGUAGES}.")
  return _BUILTIN_SPECS.get(code) or _derive_spec(code)


# ----------------------------------------------------------------------------------------------------------------
# Lexicons


def _noun_form(spec: LanguageSpec, stem: str, cls: int, plural: bool, case: int) -> str:
  if spec.class_suffixes is not None:
    word = stem + spec.class_suffixes[cls][plural]
  elif plural:
    word = spec.plural_prefix + stem + spec.plural_suffix
  else:
    word = stem
  return word + spec.case_suffixes[case]


def _adjective_form(spec: LanguageSpec, stem: str, cls: int, plural: bool) -> str:
  return stem if spec.class_suffixes is None else stem + spec.class_suffixes[cls][plural]


def _verb_form(spec: LanguageSpec, stem: str, tense: int, plural_subject: bool, question: bool) -> str:
  marker = spec.tense_markers[tense]
  word = stem
  if marker.kind == "prefix":
    word = marker.form + word
  elif marker.kind == "suffix":
    word = word + marker.form
  if plural_subject:
    word += spec.subject_plural_suffix
  if question and spec.question.kind == "suffix":
    word += spec.question.form
  return word


def _verb_words(spec: LanguageSpec, stem: str, tense: int, plural_subject: bool, question: bool) -> tuple[str, ...]:
  """The verb form with its tense particle, if the language uses one, before or after it."""
  marker = spec.tense_markers[tense]
  word = _verb_form(spec, stem, tense, plural_subject, question)
  if marker.kind == "before" and marker.form:
    return (marker.form, word)
  if marker.kind == "after" and marker.form:
    return (word, marker.form)
  return (word,)


def _inflections(spec: LanguageSpec, category: str, stem: str, concept: int) -> dict[tuple, str]:
  """Every surface word of one lexeme, keyed by its grammatical features (particles excluded)."""
  if category == "noun":
    cls = _NOUN_CLASS[concept]
    return {(pl, spec.case_suffixes[case]): _noun_form(spec, stem, cls, pl, case)
            for pl in (False, True) for case in (AGENT, PATIENT, OBLIQUE)}
  if category == "adjective":
    suffixes = spec.class_suffixes or (("", ""),)
    return {suffix: stem + suffix for pair in suffixes for suffix in pair}
  if category == "verb":
    # Features the word itself does not mark (a tense shown by a particle, an unmarked question) share a key.
    out = {}
    for tense, pl, q in itertools.product(range(3), (False, True), (False, True)):
      marker = spec.tense_markers[tense]
      key = (marker.form if marker.kind in ("prefix", "suffix") else "",
             spec.subject_plural_suffix if pl else "",
             spec.question.form if q and spec.question.kind == "suffix" else "")
      out[key] = _verb_form(spec, stem, tense, pl, q)
    return out
  return {(): stem}


@dataclasses.dataclass(frozen=True)
class Lexicon:
  """The words of one language: stems per category (indexed by concept id) and precomputed inflection tables.

  noun_table[noun][case][plural], adjective_table[adjective][noun_class][plural] are words;
  verb_table[verb][tense][plural_subject][question] is a tuple of words (the verb and its particles)."""
  code: str
  stems: Mapping[str, tuple[str, ...]]
  noun_table: tuple[tuple[tuple[str, str], ...], ...]
  adjective_table: tuple[tuple[tuple[str, str], ...], ...]
  verb_table: tuple[tuple[tuple[tuple[tuple[str, ...], tuple[str, ...]], ...], ...], ...]

  def forms(self, category: str, concept: int) -> frozenset[str]:
    """All surface words (lowercase, without punctuation or particles) of one concept of a category."""
    spec = language_spec(self.code)
    return frozenset(_inflections(spec, category, self.stems[category][concept], concept).values())


def _make_word(phon: Phonology, rng: np.random.Generator, n_syllables: int) -> str:
  u = rng.random((n_syllables, 4)).tolist()
  parts = []
  for i, (u_on, u_nuc, u_has_coda, u_coda) in enumerate(u):
    onset = _pick(phon.onsets if i == 0 else phon.medial_onsets, u_on)
    coda = _pick(phon.codas, u_coda) if u_has_coda < phon.coda_prob else ""
    parts.append(onset + _pick(phon.nuclei, u_nuc) + coda)
  return "".join(parts)


@functools.lru_cache(maxsize=None)
def lexicon(code: str) -> Lexicon:
  """The lexicon of a language, generated from a fixed seed (identical everywhere; cached since immutable).

  Frequent concepts get shorter stems (Zipf's law of abbreviation). A candidate stem is rejected when any of its
  inflected forms equals a particle or a form already taken, so every surface word belongs to exactly one
  (concept, features) and rendering is injective."""
  spec = language_spec(code)
  phon = spec.phonology
  rng = _stream(0, "xlm_jax.synthetic.lexicon", code)
  taken: set[str] = set(spec.particles())
  stems: dict[str, tuple[str, ...]] = {}
  source = None if code == "xa" else lexicon("xa")
  for category in CATEGORIES:
    lo, hi = phon.content_syllables if category in CONTENT_CATEGORIES else phon.function_syllables
    words = []
    for rank in range(_CATEGORY_SIZES[category]):
      top = lo if rank < 10 else hi  # the 10 most frequent concepts get the shortest words
      ambiguous = 0
      for attempt in range(10_000):
        n_syllables = lo + min(int(rng.random() * (top - lo + 1)), top - lo) + attempt // 50
        stem = _make_word(phon, rng, n_syllables)
        if source is not None and attempt == 0 and is_cognate(category, rank):
          stem = source.stems[category][rank]  # a cognate, unless its forms clash here (then a native stem)
        inflections = _inflections(spec, category, stem, rank)
        forms = set(inflections.values())
        if len(forms) != len(inflections):  # two feature sets give one word for this stem: try another stem,
          ambiguous += 1                    # unless the spec itself marks them identically
          if ambiguous > 100:
            raise RuntimeError(f"language {code!r} marks different {category} features identically.")
          continue
        if stem in taken or forms & taken:
          continue
        taken |= forms | {stem}
        words.append(stem)
        break
      else:  # pragma: no cover - only a degenerate phonology can get here
        raise RuntimeError(f"cannot build a lexicon for {code!r}: phonology too small.")
    stems[category] = tuple(words)

  noun_table = tuple(
      tuple(tuple(_noun_form(spec, stem, _NOUN_CLASS[c], pl, case) for pl in (False, True))
            for case in (AGENT, PATIENT, OBLIQUE))
      for c, stem in enumerate(stems["noun"]))
  adjective_table = tuple(
      tuple(tuple(_adjective_form(spec, stem, cls, pl) for pl in (False, True)) for cls in range(N_NOUN_CLASSES))
      for stem in stems["adjective"])
  verb_table = tuple(
      tuple(tuple(tuple(_verb_words(spec, stem, t, pl, q) for q in (False, True)) for pl in (False, True))
            for t in range(3))
      for stem in stems["verb"])
  return Lexicon(code, MappingProxyType(stems), noun_table, adjective_table, verb_table)


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _np_words(lex: Lexicon, spec: LanguageSpec, np_: NounPhrase, case: int) -> list[str]:
  noun = lex.noun_table[np_.noun][case][np_.plural]
  cls = _NOUN_CLASS[np_.noun]
  out: list[str] = []
  for slot in spec.np_order:
    if slot == "N":
      out.append(noun)
    elif slot == "ADJ":
      out.extend(lex.adjective_table[a][cls][np_.plural] for a in np_.adjectives)
    elif np_.numeral is not None:
      out.append(lex.stems["numeral"][np_.numeral - NUMERAL_VALUES[0]])
  return out


def _clause_words(lex: Lexicon, spec: LanguageSpec, clause: Clause, question: bool) -> list[str]:
  out: list[str] = []
  for slot in spec.clause_order:
    if slot == "S":
      out += _np_words(lex, spec, clause.agent, AGENT)
    elif slot == "V":
      out += lex.verb_table[clause.verb][_TENSE_INDEX[clause.tense]][clause.agent.plural][question]
    elif slot == "O":
      if clause.patient is not None:
        out += _np_words(lex, spec, clause.patient, PATIENT)
    elif slot == "L":
      if clause.location is not None:
        place = _np_words(lex, spec, clause.location.place, OBLIQUE)
        adposition = lex.stems["adposition"][clause.location.adposition]
        out += place + [adposition] if spec.postpositions else [adposition] + place
    elif clause.adverb is not None:
      out.append(lex.stems["adverb"][clause.adverb])
  return out


def _render(meaning: Meaning, lang: str) -> str:
  spec = language_spec(lang)
  lex = lexicon(lang)
  question = meaning.question
  text = " ".join(_clause_words(lex, spec, meaning.clauses[0], question))
  for conj, clause in zip(meaning.conjunctions, meaning.clauses[1:]):
    second = " ".join(_clause_words(lex, spec, clause, False))
    text = spec.conjunction_template.format(text, second, c=lex.stems["conjunction"][conj])
  if question and spec.question.kind == "initial":
    text = spec.question.form + " " + text
  elif question and spec.question.kind == "final":
    text = text + " " + spec.question.form
  return text[0].upper() + text[1:] + ("?" if question else ".")


def render(meaning: Meaning, lang: str) -> str:
  """One sentence (no newline) expressing `meaning` in language `lang`.

  Deterministic and injective per language; the first letter is capitalised and the sentence ends in "." or, for
  questions, "?" attached to the last word. Raises `UserError` for an unknown language or a malformed meaning."""
  validate_meaning(meaning)
  return _render(meaning, lang)


# ----------------------------------------------------------------------------------------------------------------
# Corpus


@dataclasses.dataclass(frozen=True)
class CorpusInfo:
  """What `generate_corpus` wrote (or found already written).

  mono: (split, lang) -> path of `{split}.{lang}`.
  para: (split, l1, l2) -> (path of the l1 side, path of the l2 side), l1 < l2.
  line_counts: file name -> number of lines (sentences).
  reused: True when a complete identical corpus was already there and nothing was written."""
  out_dir: Path
  seed: int
  languages: tuple[str, ...]
  pairs: tuple[tuple[str, str], ...]
  mono: Mapping[tuple[str, str], Path]
  para: Mapping[tuple[str, str, str], tuple[Path, Path]]
  line_counts: Mapping[str, int]
  manifest_path: Path
  reused: bool


def _normalise_pairs(pairs: Sequence[tuple[str, str]] | None, languages: tuple[str, ...]
                     ) -> tuple[tuple[str, str], ...]:
  if pairs is None:
    return tuple(itertools.combinations(sorted(languages), 2))
  out = set()
  for pair in pairs:
    if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(languages):
      raise UserError(f"invalid language pair {pair!r}: need two different languages among {languages}.")
    out.add(tuple(sorted(pair)))
  return tuple(sorted(out))


def _file_names(languages: Iterable[str], pairs: Iterable[tuple[str, str]]
                ) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str, str], tuple[str, str]]]:
  mono = {(split, lang): f"{split}.{lang}" for split in SPLITS for lang in languages}
  para = {(split, l1, l2): (f"{split}.{l1}-{l2}.{l1}", f"{split}.{l1}-{l2}.{l2}")
          for split in SPLITS for l1, l2 in pairs}
  return mono, para


def _draw_held_out(rng: np.random.Generator, n: int, taken: set[Meaning]) -> list[Meaning]:
  """`n` meanings from `rng` that are not in `taken` and not repeated; adds them to `taken`."""
  out: list[Meaning] = []
  budget = 50 * n + 10 * _CHUNK
  while len(out) < n:
    if budget <= 0:
      raise UserError(f"could not draw {n} held-out meanings unseen in training; ask for fewer.")
    budget -= _CHUNK
    for meaning in sample_meanings(rng, _CHUNK):
      if meaning not in taken:
        taken.add(meaning)
        out.append(meaning)
        if len(out) == n:
          break
  return out


def _text(lines: list[str]) -> bytes:
  return "".join(line + "\n" for line in lines).encode("utf-8")


def _existing_corpus(out_dir: Path, config: dict) -> dict | None:
  """The manifest of a complete corpus with this config in `out_dir`, else None."""
  try:
    manifest = json.loads((out_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
  if not isinstance(manifest, dict) or manifest.get("config") != config:
    return None
  files = manifest.get("files")
  if not isinstance(files, dict):
    return None
  for name, entry in files.items():
    try:
      if (out_dir / name).stat().st_size != entry["bytes"]:
        return None
    except (OSError, KeyError, TypeError):
      return None
  return manifest


def generate_corpus(out_dir: str | os.PathLike, *, languages: Sequence[str] = LANGUAGES, seed: int = 0,
                    n_mono: int = 20000, n_para: int = 10000, n_valid: int = 500, n_test: int = 500,
                    pairs: Sequence[tuple[str, str]] | None = None) -> CorpusInfo:
  """Write a synthetic corpus into `out_dir` (created if needed) and describe it.

  Files (UTF-8, one sentence per line, every line newline-terminated):
  - `{split}.{lang}` for split in train/valid/test and every language: monolingual text; each language draws its own
    meanings (the files are not translations of each other); n_mono / n_valid / n_test lines.
  - `{split}.{l1}-{l2}.{l1}` and `{split}.{l1}-{l2}.{l2}` (l1 < l2) for each pair (default: all pairs of
    `languages`): line i of both files render the same meaning; n_para / n_valid / n_test lines.
  - `manifest.json`: generator version, config, languages, and per file its lines, words, bytes and sha256.

  Every file and pair has its own random stream (seed, kind, languages, split); the seed changes the sentences,
  never the languages (lexicons and grammars are fixed). No valid/test meaning occurs in any
  train file of this corpus, and no meaning is repeated across valid and test files (train may repeat meanings,
  as real text does). Output is byte-for-byte deterministic for given arguments.

  Files are written under temporary names and renamed into place, the manifest last (an old manifest is removed
  first), so a corpus with a manifest is always complete. If `out_dir` already holds a complete corpus with the
  same manifest config, nothing is written and the returned info has `reused=True`. Other files in `out_dir` are
  left alone. Raises `UserError` for bad arguments."""
  languages = tuple(languages)
  if not languages or len(set(languages)) != len(languages):
    raise UserError(f"languages must be non-empty and distinct, got {languages!r}.")
  for lang in languages:
    language_spec(lang)  # validates the code
  pairs_t = _normalise_pairs(pairs, languages)
  sizes = {"n_mono": n_mono, "n_para": n_para, "n_valid": n_valid, "n_test": n_test}
  for name, value in sizes.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise UserError(f"{name} must be a non-negative int, got {value!r}.")
  if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
    raise UserError(f"seed must be a non-negative int, got {seed!r}.")

  out = Path(out_dir)
  config = {"version": GENERATOR_VERSION, "seed": seed, "languages": list(languages),
            "pairs": [list(p) for p in pairs_t], **sizes}
  mono_names, para_names = _file_names(languages, pairs_t)

  def info(line_counts: Mapping[str, int], reused: bool) -> CorpusInfo:
    return CorpusInfo(
        out_dir=out, seed=seed, languages=languages, pairs=pairs_t,
        mono=MappingProxyType({k: out / v for k, v in mono_names.items()}),
        para=MappingProxyType({k: (out / a, out / b) for k, (a, b) in para_names.items()}),
        line_counts=MappingProxyType(dict(line_counts)), manifest_path=out / MANIFEST_NAME, reused=reused)

  existing = _existing_corpus(out, config)
  if existing is not None:
    return info({name: entry["lines"] for name, entry in existing["files"].items()}, reused=True)

  # Meanings: train first, then held-out splits drawn from their own streams and filtered against all train
  # meanings (and each other).
  held_out_size = {"valid": n_valid, "test": n_test}
  mono_meanings: dict[tuple[str, str], list[Meaning]] = {}
  para_meanings: dict[tuple[str, str, str], list[Meaning]] = {}
  for lang in languages:
    mono_meanings[("train", lang)] = sample_meanings(_stream(seed, "mono", lang, "train"), n_mono)
  for l1, l2 in pairs_t:
    para_meanings[("train", l1, l2)] = sample_meanings(_stream(seed, "para", l1, l2, "train"), n_para)
  taken: set[Meaning] = set()
  for meanings in itertools.chain(mono_meanings.values(), para_meanings.values()):
    taken.update(meanings)
  for split in ("valid", "test"):
    for lang in languages:
      mono_meanings[(split, lang)] = _draw_held_out(_stream(seed, "mono", lang, split), held_out_size[split], taken)
    for l1, l2 in pairs_t:
      para_meanings[(split, l1, l2)] = _draw_held_out(_stream(seed, "para", l1, l2, split), held_out_size[split], taken)

  contents: dict[str, list[str]] = {}
  for (split, lang), name in mono_names.items():
    contents[name] = [_render(m, lang) for m in mono_meanings[(split, lang)]]
  for (split, l1, l2), (name1, name2) in para_names.items():
    meanings = para_meanings[(split, l1, l2)]
    contents[name1] = [_render(m, l1) for m in meanings]
    contents[name2] = [_render(m, l2) for m in meanings]

  files = {}
  out.mkdir(parents=True, exist_ok=True)
  tmp_dir = Path(tempfile.mkdtemp(dir=out, prefix=".synthetic-tmp-"))
  try:
    for name, lines in contents.items():
      data = _text(lines)
      (tmp_dir / name).write_bytes(data)
      files[name] = {"lines": len(lines), "words": sum(line.count(" ") + 1 for line in lines),
                     "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {
        "generator": "xlm_jax.data.synthetic", "config": config,
        "languages": {lang: {"word_order": language_spec(lang).word_order,
                             "description": language_spec(lang).description} for lang in languages},
        "layout": "{split}.{lang} monolingual; {split}.{l1}-{l2}.{lang} parallel (l1 < l2, line-aligned)",
        "files": files}
    (tmp_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for name in contents:
      os.replace(tmp_dir / name, out / name)
    os.replace(tmp_dir / MANIFEST_NAME, out / MANIFEST_NAME)
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
  return info({name: entry["lines"] for name, entry in files.items()}, reused=False)
