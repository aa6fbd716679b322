"""Word translation from the two UNMT halves alone (issue 14): can English lines 0-14,499 and French lines
14,500-28,999 of Multi30k, never paired, give the word-by-word start that Lample et al. (2018) begin from?

  python benchmarks/unmt_word_translation.py --out benchmarks/results/unmt_word_translation.json
  python benchmarks/unmt_word_translation.py --vocab 4000 --window 4 --dim 200 --induce 2000 \
      --out benchmarks/results/unmt_word_translation_v4000_w4_d200.json
  python benchmarks/unmt_word_translation.py --frequency-prior 0.05 --write-pseudo runs/unmt/word_by_word \
      --out benchmarks/results/unmt_word_translation_prior005.json

1. Words: lowercased, cut into runs of letters/digits and single punctuation marks; the `--vocab` most frequent
   of each half.
2. Vectors per language: positive PMI of co-occurrence within `--window` words (contexts: the same words, their
   distribution smoothed with exponent 0.75), truncated SVD to `--dim`, rows unit-normed, centred, unit-normed.
3. Mapping: orthogonal (Procrustes) from the English to the French vectors, seeded with the words spelled the
   same in both halves (names, numbers, punctuation, loanwords), then self-learning: refit on the mutual nearest
   neighbours by CSLS among the `--induce` most frequent words of each side, `--iterations` times. With
   `--frequency-prior BETA`, BETA * -|log count_en - log count_fr| is added to CSLS there and in the final tables:
   the halves describe the same kind of images, so a word and its translation occur about equally often.
4. Evaluation only (parallel text is read here and nowhere above): a reference dictionary from all 29,000
   training pairs (for each English word, the French word with the highest Dice coefficient over sentence
   pairs; kept when that Dice is at least 0.3), P@1 of the induced translations of the most frequent English
   words; the same with the mapping fitted on half of that reference dictionary and scored on the other half
   (what these vectors allow at best with an orthogonal map); and word-by-word translation of test_2016_flickr
   in both directions (each known word replaced by its nearest neighbour, others kept), scored by sacreBLEU on
   lowercased text cut by the same word split, output and references alike (our words are lowercased, so this
   is not the detokenized BLEU of the UNMT curves).
5. `--write-pseudo FOLDER` (Lample et al. 2018's first step as data): per direction src-tgt, the real tgt half and
   its word-by-word translation into src as the source side (FOLDER/<src>-<tgt>, for config.nmt.direction_corpora).

The trap: the reference dictionary is a heuristic (one translation per word, by co-occurrence), so P@1 counts a
synonym or an inflection as wrong; it ranks settings, it is not a published BLI figure.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import os
import re
import time

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from bench_common import write_json
from xlm_jax.provenance import provenance

WORD = re.compile(r"\w+|[^\w\s]")
HALVES = {"en": (0, 14500), "fr": (14500, 29000)}  # configs/multi30k.py:HALVES


def data_dir() -> str:
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
  import multi30k  # configs/multi30k.py: the data folder ($XLM_JAX_MULTI30K overrides it)
  return multi30k.DATA


def words(line: str) -> list[str]:
  return WORD.findall(line.lower())


def read(path: str, lines: tuple[int, int] | None = None) -> list[list[str]]:
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return [words(l) for i, l in enumerate(f) if lines is None or lines[0] <= i < lines[1]]


def vocabulary(sentences: list[list[str]], size: int) -> list[str]:
  counts = collections.Counter(w for s in sentences for w in s)
  return [w for w, _ in counts.most_common(size)]


def ppmi_vectors(sentences: list[list[str]], vocab: list[str], window: int, dim: int) -> np.ndarray:
  """Rows of `vocab`: SVD of the positive PMI matrix (contexts = the same words, smoothed by 0.75)."""
  index = {w: i for i, w in enumerate(vocab)}
  rows, cols = [], []
  for s in sentences:
    ids = [index.get(w, -1) for w in s]
    for p, a in enumerate(ids):
      if a < 0:
        continue
      for q in range(max(0, p - window), min(len(ids), p + window + 1)):
        if q != p and ids[q] >= 0:
          rows.append(a)
          cols.append(ids[q])
  n = len(vocab)
  counts = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).toarray()
  context = counts.sum(0) ** 0.75
  pmi = np.log(np.maximum(counts, 1e-300) * context.sum() / (counts.sum(1, keepdims=True) * context[None, :]))
  ppmi = np.where(counts > 0, np.maximum(pmi, 0.0), 0.0)
  u, s, _ = scipy.sparse.linalg.svds(ppmi, k=dim, random_state=0)
  return normalise(u * np.sqrt(s))


def normalise(x: np.ndarray) -> np.ndarray:
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  x = x - x.mean(0, keepdims=True)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def procrustes(x: np.ndarray, z: np.ndarray) -> np.ndarray:
  """The orthogonal W minimising |x W - z| (rows paired)."""
  u, _, vt = np.linalg.svd(x.T @ z)
  return u @ vt


def csls(a: np.ndarray, b: np.ndarray, k: int = 10) -> np.ndarray:
  """CSLS similarities [len(a), len(b)] of unit rows (Conneau et al. 2018): 2 cos - mean top-k cos of each side."""
  cos = a @ b.T
  ra = np.sort(cos, axis=1)[:, -k:].mean(1)
  rb = np.sort(cos, axis=0)[-k:, :].mean(0)
  return 2 * cos - ra[:, None] - rb[None, :]


def mutual_pairs(sim: np.ndarray) -> list[tuple[int, int]]:
  forward, backward = sim.argmax(1), sim.argmax(0)
  return [(i, int(j)) for i, j in enumerate(forward) if backward[j] == i]


def frequency_prior(x_counts: np.ndarray, z_counts: np.ndarray) -> np.ndarray:
  """-|log count_x - log count_z| [len(x), len(z)]: the two halves describe the same kind of images, so a word and
  its translation occur about equally often (an unsupervised signal of comparable corpora, not of parallel ones)."""
  return -np.abs(np.log(x_counts)[:, None] - np.log(z_counts)[None, :])


def self_learning(x: np.ndarray, z: np.ndarray, seed: list[tuple[int, int]], induce: int,
                  iterations: int, prior: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
  """Procrustes from `seed`, refitted `iterations` times on the mutual nearest neighbours among the `induce` most
  frequent words, by CSLS plus `prior` (a [len(x), len(z)] score added to it, e.g. beta * frequency_prior)."""
  pairs, history = seed, []
  for it in range(iterations + 1):
    w = procrustes(x[[i for i, _ in pairs]], z[[j for _, j in pairs]])
    if it == iterations:
      break
    extra = 0.0 if prior is None else prior[:induce, :induce]
    pairs = mutual_pairs(csls(x[:induce] @ w, z[:induce]) + extra)
    history.append({"iteration": it + 1, "dictionary_size": len(pairs)})
  return w, history


def reference_dictionary(en: list[list[str]], fr: list[list[str]], en_vocab: list[str], fr_vocab: list[str],
                         min_dice: float = 0.3) -> dict[str, str]:
  """English word -> the French word with the highest Dice coefficient over the sentence pairs."""
  def incidence(sentences, vocab):
    index = {w: i for i, w in enumerate(vocab)}
    r, c = [], []
    for n, s in enumerate(sentences):
      for i in {index[w] for w in s if w in index}:
        r.append(n)
        c.append(i)
    return scipy.sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(sentences), len(vocab)))
  a, b = incidence(en, en_vocab), incidence(fr, fr_vocab)
  both = (a.T @ b).toarray()
  dice = 2 * both / (np.asarray(a.sum(0)).ravel()[:, None] + np.asarray(b.sum(0)).ravel()[None, :])
  best = dice.argmax(1)
  return {en_vocab[i]: fr_vocab[j] for i, j in enumerate(best) if dice[i, j] >= min_dice}


def precision_at_1(w: np.ndarray, x: np.ndarray, z: np.ndarray, en_vocab: list[str], fr_vocab: list[str],
                   gold: dict[str, str], words_: list[str], prior=0.0) -> tuple[float, int]:
  words_ = [e for e in words_ if e in gold]
  if not words_:
    return float("nan"), 0
  index = {e: i for i, e in enumerate(en_vocab)}
  sim = csls(x @ w, z) + prior
  hits = sum(fr_vocab[int(sim[index[e]].argmax())] == gold[e] for e in words_)
  return hits / len(words_), len(words_)


def word_by_word(sentences: list[list[str]], table: dict[str, str]) -> list[str]:
  return [" ".join(table.get(t, t) for t in s) for s in sentences]


def detokenized(line: str) -> str:
  """Our word split undone as far as spacing goes: no space before closing punctuation, none around apostrophes
  and hyphens (`l ' eau` -> `l'eau`, `t - shirt` -> `t-shirt`)."""
  line = re.sub(r" ([.,!?;:)])", r"\1", line)
  line = re.sub(r"\( ", "(", line)
  return re.sub(r" ?(['-]) ?", r"\1", line)


def write_pseudo_parallel(folder: str, data: str, halves: dict[str, list[str]], tables: dict[tuple[str, str], dict]):
  """Lample et al. (2018)'s first step as data: each half's lines with their word-by-word translation (the
  unsupervised tables only), one corpus folder per direction `<src>-<tgt>` whose source side is the word-by-word
  translation of real `<tgt>` lines (a model trained on it learns to turn rough `<src>` into fluent `<tgt>`):
  train.<lang>.gz aligned, plus links to the real val and test_2016_flickr files for BLEU."""
  for (src, tgt), table in tables.items():
    # direction src -> tgt: real tgt lines (tgt's own half), their word-by-word translation into src as sources
    out = os.path.join(folder, f"{src}-{tgt}")
    os.makedirs(out, exist_ok=True)
    real = halves[tgt]
    rough = []
    for line in real:
      text = detokenized(" ".join(table.get(t, t) for t in words(line)))
      rough.append(text[:1].upper() + text[1:] if line[:1].isupper() else text)
    for lang, lines in ((tgt, real), (src, rough)):
      with gzip.open(os.path.join(out, f"train.{lang}.gz"), "wt", encoding="utf-8") as f:
        f.write("".join(l + "\n" for l in lines))
    for name in os.listdir(data):
      if name.startswith(("val.", "test_")) and not os.path.exists(os.path.join(out, name)):
        os.symlink(os.path.join(data, name), os.path.join(out, name))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--vocab", type=int, default=2000)
  p.add_argument("--window", type=int, default=5)
  p.add_argument("--dim", type=int, default=100)
  p.add_argument("--induce", type=int, default=1000, help="words per side the self-learning dictionary is drawn from")
  p.add_argument("--iterations", type=int, default=10)
  p.add_argument("--frequency-prior", type=float, default=0.0, metavar="BETA",
                 help="add BETA * -|log count_en - log count_fr| to CSLS (self-learning and the tables); 0 = off")
  p.add_argument("--out", default=None)
  p.add_argument("--write-pseudo", default=None, metavar="FOLDER",
                 help="also write word-by-word pseudo-parallel corpora (FOLDER/en-fr, FOLDER/fr-en)")
  args = p.parse_args(argv)
  import sacrebleu
  started = time.time()
  data = data_dir()
  halves = {l: read(os.path.join(data, f"train.{l}.gz"), HALVES[l]) for l in ("en", "fr")}
  vocab = {l: vocabulary(halves[l], args.vocab) for l in halves}
  vectors = {l: ppmi_vectors(halves[l], vocab[l], args.window, args.dim) for l in halves}
  fr_index = {w: i for i, w in enumerate(vocab["fr"])}
  seed = [(i, fr_index[w]) for i, w in enumerate(vocab["en"]) if w in fr_index]
  counts = {l: collections.Counter(t for s in halves[l] for t in s) for l in halves}
  prior = args.frequency_prior * frequency_prior(*(np.array([counts[l][t] for t in vocab[l]], float)
                                                   for l in ("en", "fr")))
  w, history = self_learning(vectors["en"], vectors["fr"], seed, args.induce, args.iterations, prior)

  # evaluation: parallel text from here on
  pairs_en, pairs_fr = (read(os.path.join(data, f"train.{l}.gz")) for l in ("en", "fr"))
  gold = reference_dictionary(pairs_en, pairs_fr, vocab["en"], vocab["fr"])
  frequent = [e for e in vocab["en"] if e.isalpha()]
  result = dict(provenance(), benchmark="unmt_word_translation", settings=vars(args),
                seed_dictionary=len(seed), self_learning=history, reference_dictionary=len(gold))
  scores = {}
  for top in (500, 1000, 2000):
    scores[f"top{top}"] = dict(zip(("p_at_1", "words"),
                                   precision_at_1(w, vectors["en"], vectors["fr"], vocab["en"], vocab["fr"], gold,
                                                  frequent[:top], prior)))
  ranked = [e for e in frequent if e in gold][:2000]
  fit, held = ranked[0::2], ranked[1::2]
  en_index = {e: i for i, e in enumerate(vocab["en"])}
  w_sup = procrustes(vectors["en"][[en_index[e] for e in fit]], vectors["fr"][[fr_index[gold[e]] for e in fit]])
  sup = precision_at_1(w_sup, vectors["en"], vectors["fr"], vocab["en"], vocab["fr"], gold, held, prior)
  scores["mapping_fitted_on_reference_half"] = {"p_at_1": sup[0], "words": sup[1]}
  result["precision"] = scores

  test = {l: gzip.open(os.path.join(data, f"test_2016_flickr.{l}.gz"), "rt", encoding="utf-8").read().splitlines()
          for l in ("en", "fr")}
  sim = csls(vectors["en"] @ w, vectors["fr"]) + prior
  en_fr = {e: vocab["fr"][int(sim[i].argmax())] for i, e in enumerate(vocab["en"])}
  fr_en = {f: vocab["en"][int(sim[:, j].argmax())] for j, f in enumerate(vocab["fr"])}
  bleu = {}
  for src, tgt, table in (("en", "fr", en_fr), ("fr", "en", fr_en)):
    out = word_by_word([words(l) for l in test[src]], table)
    refs = [" ".join(words(l)) for l in test[tgt]]
    copy = [" ".join(words(l)) for l in test[src]]
    bleu[f"{src}-{tgt}"] = {
        "word_by_word": sacrebleu.corpus_bleu(out, [refs], tokenize="none").score,
        "copy_the_source": sacrebleu.corpus_bleu(copy, [refs], tokenize="none").score}
  result["test_2016_flickr_bleu_lowercased_word_split"] = bleu
  result["samples"] = {e: en_fr[e] for e in frequent[:40]}
  if args.write_pseudo:
    raw = {}
    for l in ("en", "fr"):
      with gzip.open(os.path.join(data, f"train.{l}.gz"), "rt", encoding="utf-8") as f:
        raw[l] = [t.rstrip("\n") for i, t in enumerate(f) if HALVES[l][0] <= i < HALVES[l][1]]
    write_pseudo_parallel(args.write_pseudo, data, raw, {("en", "fr"): fr_en, ("fr", "en"): en_fr})
    result["pseudo_parallel"] = args.write_pseudo
  result["seconds"] = time.time() - started
  print(f"seed dictionary {len(seed)} identical words; reference dictionary {len(gold)} words")
  for k, v in scores.items():
    print(f"P@1 {k}: {100 * v['p_at_1']:.1f}% over {v['words']} words")
  for k, v in bleu.items():
    print(f"word-by-word {k}: {v['word_by_word']:.2f} BLEU (copy the source {v['copy_the_source']:.2f})")
  print("samples:", ", ".join(f"{e}->{f}" for e, f in list(result["samples"].items())[:25]))
  if args.out:
    write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
