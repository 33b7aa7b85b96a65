"""Data augmentation of the train split: EDA word operations and paraphrases (e.g. back-translations).

EDA (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text
Classification") makes a new sentence with one of four word operations, each a pure function of a word list
and a `numpy.random.Generator`:

* `synonym_replacement`: n words that have synonyms, each replaced by one of its synonyms;
* `random_insertion`: n times, a synonym of a word of the sentence inserted at a random position;
* `random_swap`: n times, two words at distinct positions exchanged;
* `random_deletion`: each word deleted with probability alpha, never all of them.

Here n = max(1, round(alpha * words)). `eda` picks ONE operation at random among the configured ones per new
sentence, as the EDA reference code does. Words are whitespace-separated tokens; a token's surrounding
punctuation is kept and its capitalisation copied onto the synonym ("Great!" -> "Superb!").

Synonyms come from `synonyms.tsv`, shipped with jaxft: 805 head words and 3,224 (word, synonym) pairs of
English review vocabulary (adjectives, adverbs, verbs and nouns of movie and product reviews), written by
hand for jaxft and dedicated to the public domain (CC0). WordNet is not used: NLTK downloads it at run time.
`load_synonyms` reads a file as written, without symmetric closure: a synonym is itself looked up only if
it heads its own line, which keeps ambiguous words ("like", "kind", "last") from being replaced.

Paraphrases: `paraphrase` takes any callable `text -> list[str]` (for example a user's round trip through
translation models: back-translation, Sennrich et al. 2016). No translation model ships with jaxft, so the
config route is a file of precomputed paraphrases, `augment.paraphrases_path` (`paraphrases_from_file`).

`augment_split` is the pipeline stage (`jaxft.training.pipeline.read_splits`): it runs on the train split
only, after any subset and k-shot sampling, and re-encodes its labels. Originals are always kept, in place and
first; the copies follow, keeping each original's label, `text_pair` and `source` (so error messages point at
the line a copy came from). Only `text` is changed: in sentence pairs the second text stays as it is. Every
draw comes from `config.seed`, so the same seed gives the same split.
"""

import dataclasses
import json
import logging
import os
import string
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from jaxft import config as config_lib
from jaxft.config import expand_path
from jaxft.errors import UserError

OPS = config_lib.AUGMENT_OPS
AUGMENTABLE_TASKS = config_lib.AUGMENTABLE_TASKS
DEFAULT_SYNONYMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synonyms.tsv")
# Stream ids mixed into `config.seed`, so augmentation draws differ from the subset and k-shot draws.
_EDA_STREAM, _PARAPHRASE_STREAM = 101, 102


# ---- resources -----------------------------------------------------------------------------------------
def load_synonyms(path: str | None = None, key: str = "augment.synonyms") -> dict[str, tuple[str, ...]]:
    """Reads a synonym file: one `word<TAB>synonym,synonym,...` line per head word.

    Lower-cased; blank lines and lines starting with "#" are skipped; a head word listed twice gets the
    union in order; a word is never its own synonym. No symmetric closure (see the module docstring).

    Args:
      path: the file; None reads the list jaxft ships (`synonyms.tsv`).
      key: the config key named in errors.

    Returns:
      {word: synonyms} with at least one synonym per word.

    Raises:
      UserError: a missing file, a line without a tab or without synonyms, or a file with no entries.
    """
    path = DEFAULT_SYNONYMS if path is None else expand_path(path)
    if not os.path.isfile(path):
        raise UserError(f"config {key}={path}: no such file")
    table: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            word, tab, rest = line.partition("\t")
            word = word.strip().lower()
            synonyms = [s.strip().lower() for s in rest.split(",") if s.strip()]
            synonyms = [s for s in synonyms if s != word]
            if not tab or not word or not synonyms:
                raise UserError(f"{path}:{number}: expected 'word<TAB>synonym,synonym,...' ({key})")
            known = table.setdefault(word, [])
            known.extend(s for s in synonyms if s not in known)
    if not table:
        raise UserError(f"config {key}={path}: the file has no synonym entries")
    return {word: tuple(synonyms) for word, synonyms in table.items()}


def paraphrases_from_file(path: str, key: str = "augment.paraphrases_path") -> dict[str, list[str]]:
    """Reads precomputed paraphrases: JSONL lines `{"text": ..., "paraphrases": [...]}`.

    Texts are matched after stripping surrounding whitespace (as the readers strip example texts); a text
    listed on several lines gets all their paraphrases, in file order.

    Raises:
      UserError: a missing file, a line that is not such an object, or a file without any line.
    """
    path = expand_path(path)
    if not os.path.isfile(path):
        raise UserError(f"config {key}={path}: no such file")
    table: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise UserError(f"{path}:{number}: not JSON ({error}) ({key})") from None
            text = record.get("text") if isinstance(record, dict) else None
            paraphrases = record.get("paraphrases") if isinstance(record, dict) else None
            if (
                not isinstance(text, str)
                or not isinstance(paraphrases, list)
                or not all(isinstance(p, str) for p in paraphrases)
            ):
                raise UserError(
                    f'{path}:{number}: expected {{"text": "...", "paraphrases": ["...", ...]}} ({key})'
                )
            table.setdefault(text.strip(), []).extend(p.strip() for p in paraphrases)
    if not table:
        raise UserError(f"config {key}={path}: the file has no paraphrases")
    return table


# ---- EDA operations on a word list -----------------------------------------------------------------------
def _lookup_key(token: str) -> str:
    return token.strip(string.punctuation).lower()


def _respell(token: str, synonym: str) -> str:
    """`synonym` in the place of `token`: the token's surrounding punctuation and capitalisation kept."""
    core = token.strip(string.punctuation)
    start = token.find(core) if core else 0
    prefix, suffix = token[:start], token[start + len(core) :]
    if len(core) > 1 and core.isupper():
        synonym = synonym.upper()
    elif core[:1].isupper():
        synonym = synonym[:1].upper() + synonym[1:]
    return prefix + synonym + suffix


def synonym_replacement(words: Sequence[str], n: int, synonyms: dict, rng: np.random.Generator) -> list[str]:
    """n words (fewer when fewer have synonyms), at distinct positions, each replaced by a random synonym."""
    out = list(words)
    candidates = [i for i, word in enumerate(out) if _lookup_key(word) in synonyms]
    if not candidates:
        return out
    for i in np.sort(rng.choice(candidates, min(n, len(candidates)), replace=False)):
        out[i] = _respell(out[i], str(rng.choice(synonyms[_lookup_key(out[i])])))
    return out


def random_insertion(words: Sequence[str], n: int, synonyms: dict, rng: np.random.Generator) -> list[str]:
    """n times: a synonym of a random word of the sentence (as given) inserted at a random position.

    The words are unchanged when none has a synonym.
    """
    out = list(words)
    keys = [_lookup_key(word) for word in words if _lookup_key(word) in synonyms]
    if not keys:
        return out
    for _ in range(n):
        synonym = str(rng.choice(synonyms[keys[rng.integers(len(keys))]]))
        out.insert(int(rng.integers(len(out) + 1)), synonym)
    return out


def random_swap(words: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """n times: the words at two distinct random positions exchanged (unchanged under two words)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.choice(len(out), 2, replace=False)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: Sequence[str], p: float, rng: np.random.Generator) -> list[str]:
    """Each word deleted with probability p; when all would go, one random word stays."""
    if len(words) <= 1:
        return list(words)
    keep = rng.random(len(words)) >= p
    if not keep.any():
        return [words[int(rng.integers(len(words)))]]
    return [word for word, kept in zip(words, keep, strict=True) if kept]


def eda(text: str, ops: Sequence[str], alpha: float, synonyms: dict, rng: np.random.Generator) -> str:
    """One new sentence: ONE operation drawn from `ops`, applied to the whitespace-separated words of `text`.

    Args:
      text: the sentence.
      ops: names among `OPS`.
      alpha: fraction of the words changed (n = max(1, round(alpha * words))); the deletion probability.
      synonyms: `load_synonyms`'s table.
      rng: the only source of randomness.

    Returns:
      The new sentence, words joined by single spaces; it may equal `text` (no word with a synonym, a swap
      of equal words), as in the EDA reference code.
    """
    words = text.split()
    op = ops[int(rng.integers(len(ops)))]
    n = max(1, round(alpha * len(words)))
    if op == "synonym":
        words = synonym_replacement(words, n, synonyms, rng)
    elif op == "insert":
        words = random_insertion(words, n, synonyms, rng)
    elif op == "swap":
        words = random_swap(words, n, rng)
    elif op == "delete":
        words = random_deletion(words, alpha, rng)
    else:
        raise ValueError(f"unknown EDA operation {op!r}; expected one of {OPS}")
    return " ".join(words)


# ---- paraphrases ---------------------------------------------------------------------------------------
def paraphrase_copies(
    examples: Sequence, fn: Callable[[str], list[str]], num: int, rng: np.random.Generator
) -> list:
    """Up to `num` new examples per example, their `text` replaced by paraphrases `fn(text)` returns.

    Empty paraphrases, repeats and the text itself are dropped; of the rest, `num` are drawn without
    replacement (all of them when fewer) and kept in `fn`'s order. Copies keep every other field.
    """
    copies = []
    for example in examples:
        candidates = []
        for text in fn(example.text) or ():
            text = text.strip()
            if text and text != example.text and text not in candidates:
                candidates.append(text)
        if len(candidates) > num:
            candidates = [candidates[i] for i in np.sort(rng.choice(len(candidates), num, replace=False))]
        copies.extend(dataclasses.replace(example, text=text) for text in candidates)
    return copies


def paraphrase(
    examples: Sequence, fn: Callable[[str], list[str]], num: int, rng: np.random.Generator
) -> list:
    """The examples followed by up to `num` paraphrased copies of each (see `paraphrase_copies`).

    Example (a back-translation round trip with the user's own translation functions):

        augmented = paraphrase(examples, lambda t: [to_en(to_de(t))], 1, np.random.default_rng(0))
    """
    return list(examples) + paraphrase_copies(examples, fn, num, rng)


# ---- the pipeline stage --------------------------------------------------------------------------------
def _ops(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    ops = config.get("eda_ops") or ()
    return (ops,) if isinstance(ops, str) else tuple(ops)


def validate(config: ml_collections.ConfigDict, task_name: str = "classification") -> None:
    """Raises `UserError` naming the first `augment.*` key that cannot work (`jaxft.config.check_augment`:
    the rules live with the others; files are checked on reading)."""
    config_lib.check_augment(config, task_name)


def augment_train(
    examples: list, config: ml_collections.ConfigDict | None, seed: int, task_name: str = "classification"
) -> list:
    """The training examples followed by their new copies (`examples` itself when augmentation is off).

    Each example gets `num_augmented` EDA copies (when `eda_ops` is set) and up to `num_augmented`
    paraphrases from `paraphrases_path` (when set), in that order, EDA copies of all examples first.

    Args:
      examples: the train split's examples (with `text`, `text_pair`, label and `source` fields).
      config: the `augment` section of the config; None (a config from before augmentation) is off.
      seed: `config.seed`; the same seed gives the same copies.
      task_name: `task.name`, which must be one whose targets survive a change of words.

    Raises:
      UserError: a bad `augment.*` key, file or task (see `validate`).
    """
    if config is None:
        return examples
    validate(config, task_name)
    ops, num = _ops(config), int(config.num_augmented)
    path = config.get("paraphrases_path")
    if not ops and not path:
        return examples
    eda_copies = []
    if ops:
        synonyms = load_synonyms(config.get("synonyms"))
        rng = np.random.default_rng([seed, _EDA_STREAM])
        alpha = float(config.eda_alpha)
        eda_copies = [
            dataclasses.replace(example, text=eda(example.text, ops, alpha, synonyms, rng))
            for example in examples
            for _ in range(num)
        ]
    found = []
    if path:
        table = paraphrases_from_file(path)
        rng = np.random.default_rng([seed, _PARAPHRASE_STREAM])
        found = paraphrase_copies(examples, lambda text: table.get(text.strip(), []), num, rng)
        matched = sum(example.text.strip() in table for example in examples)
        logging.info("augment: %d of %d training texts are in %s", matched, len(examples), path)
    logging.info(
        "augment: %d training examples added (%d EDA, %d paraphrases) to %d",
        len(eda_copies) + len(found),
        len(eda_copies),
        len(found),
        len(examples),
    )
    return list(examples) + eda_copies + found


def augment_split(split, config: ml_collections.ConfigDict | None, seed: int, task, label_names: list[str]):
    """`split` (a `pipeline.Split`) with `augment_train`'s examples and their labels encoded by `task`."""
    examples = augment_train(split.examples, config, seed, task.name)
    if examples is split.examples:
        return split
    return dataclasses.replace(split, examples=examples, labels=task.encode(examples, label_names))
