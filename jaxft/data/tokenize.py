"""Tokenization: examples to fixed-width int32 arrays, with an on-disk cache.

The whole split is tokenized once, up front, into arrays of width max_seq_length; batching later slices them
down to a length bucket. Only fast (Rust) tokenizers are accepted: they tokenize a batch of a thousand texts
in one call, which is what makes a 400k-example split take seconds instead of minutes.
"""

import hashlib
import json
import logging
import os
import tempfile

import numpy as np

from jaxft import files
from jaxft.data import long_inputs as long_inputs_lib
from jaxft.data.example import Example
from jaxft.errors import UserError

logger = logging.getLogger(__name__)

_CACHE_VERSION = 1  # bump when the cached arrays change meaning
_FEATURE_KEYS = ("input_ids", "token_type_ids", "length")
_WINDOW_KEY = "example_index"  # the features of long_inputs="windows" also hold each row's example
# The files that hold a tokenizer's vocabulary, by kind: without one of them transformers still builds a
# tokenizer (from tokenizer_config.json alone), but one holding only its special tokens, which maps every
# word to [UNK]. A tuple is a set of files that must all be there.
VOCABULARY_FILES = (
    "tokenizer.json",  # any fast tokenizer's full serialisation
    "vocab.txt",  # WordPiece (BERT, ELECTRA, DistilBERT)
    "spiece.model",  # SentencePiece (ALBERT, T5, XLNet)
    "spm.model",  # SentencePiece (DeBERTa-v2/v3)
    "sentencepiece.bpe.model",  # SentencePiece BPE (XLM-R, CamemBERT)
    "tokenizer.model",  # SentencePiece under the name Llama-style checkpoints use
    ("vocab.json", "merges.txt"),  # byte-level BPE (RoBERTa, GPT-2)
)
# Embedding tables are often padded beyond the tokenizer to a multiple of 8, 64 or 128 rows (tensor-core
# friendly shapes: T5 32100 -> 32128, GPT-2 50257 -> 50304); more unreachable rows than that mean the
# tokenizer is another model's, or lost its vocabulary.
_VOCAB_PADDING = 128


def load_tokenizer(path: str, *, words: bool = False):
    """Loads a fast tokenizer from a local directory (never from the network).

    Args:
        path: Directory with tokenizer.json or vocab.txt plus tokenizer_config.json; environment variables
            and `~` are expanded.
        words: the input comes split into words (NER). A byte-level BPE tokenizer (RoBERTa's) then puts the
            space before each word that running text has there (`add_prefix_space=True`); without it every
            word is encoded as if it began the text (`Smith` as `Sm ith`, not `ĠSmith`), pieces the model
            rarely saw in pre-training.

    Returns:
        A `transformers` fast tokenizer.

    Raises:
        UserError: If the directory is missing, holds no vocabulary file (`VOCABULARY_FILES`), holds no
            loadable tokenizer, or only a slow one.
    """
    import transformers  # deferred: importing transformers takes seconds and most callers never need it

    from jaxft.models.convert import resolve_model_dir

    path = resolve_model_dir(os.path.expanduser(os.path.expandvars(path)))
    if not os.path.isdir(path):
        raise UserError(f"{path}: no such tokenizer directory (model.tokenizer / model.checkpoint)")
    check_vocabulary_files(path)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError) for a bad dir
        raise UserError(f"{path}: cannot load a tokenizer: {' '.join(str(e).split())}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{path}: {type(tokenizer).__name__} is not a fast tokenizer; add a tokenizer.json")
    if words and getattr(tokenizer, "add_prefix_space", None) is False:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            path, local_files_only=True, add_prefix_space=True
        )
    return tokenizer


def check_vocabulary_files(path: str) -> None:
    """Raises `UserError` if the tokenizer directory `path` holds none of the `VOCABULARY_FILES`."""
    for entry in VOCABULARY_FILES:
        if all(
            os.path.isfile(os.path.join(path, name))
            for name in (entry if isinstance(entry, tuple) else (entry,))
        ):
            return
    names = ", ".join(" + ".join(e) if isinstance(e, tuple) else e for e in VOCABULARY_FILES)
    raise UserError(f"{path}: the tokenizer has no vocabulary file (none of {names})")


def check_fits_model(tokenizer, vocab_size: int, pad_token_id: int | None, where: str) -> None:
    """Raises `UserError` unless `tokenizer` is one the model's embedding table was made for.

    The rule, from what the model takes as input: every id the tokenizer emits must have a row
    (`len(tokenizer) <= vocab_size`, the special tokens [CLS] [SEP] [PAD] [MASK] [UNK] included), the
    model's own padding id must be a token of the tokenizer, and the tokenizer must reach every row of the
    table except padding up to the next multiple of 128 (`vocab_size <= round_up(len(tokenizer), 128)`):
    rows no token can reach mean another model's tokenizer, or one that lost its vocabulary. A tokenizer that
    holds nothing but its special tokens is refused too, whatever the model: it maps every word to [UNK].

    Args:
        tokenizer: a tokenizer from `load_tokenizer` (after the task added its tokens).
        vocab_size: rows of the model's word-embedding table.
        pad_token_id: the model config's padding id (None: not recorded).
        where: names the tokenizer in the message (its directory and the config key).
    """
    size = len(tokenizer)
    special = {i for i in tokenizer.all_special_ids if i is not None}
    if size <= len(special):
        raise UserError(
            f"{where}: the tokenizer holds only its {size} special token(s); its vocabulary is missing"
        )
    if size > vocab_size:
        raise UserError(
            f"{where}: the tokenizer has {size} tokens but the model's vocab_size is {vocab_size}"
        )
    padded = -(-size // _VOCAB_PADDING) * _VOCAB_PADDING
    if vocab_size > padded:
        raise UserError(
            f"{where}: the tokenizer has {size} tokens but the model's vocab_size is {vocab_size}: "
            f"{vocab_size - size} embedding rows no token reaches (more than padding to a multiple of "
            f"{_VOCAB_PADDING}); it is not this model's tokenizer"
        )
    if pad_token_id is not None and not 0 <= pad_token_id < size:
        raise UserError(
            f"{where}: the model's pad_token_id={pad_token_id} is not a token of the tokenizer "
            f"({size} tokens)"
        )


def fingerprint(tokenizer) -> str:
    """16 hex digits that change whenever the tokenizer would map some text to other ids.

    The hash of its backend (Rust) serialisation: vocabulary, normaliser (lower-casing, accents),
    pre-tokeniser, model, post-processor and added tokens; the truncation and padding settings that a call
    leaves behind are left out. A tokenizer without a backend is hashed by its class, size and vocabulary.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        description = json.loads(backend.to_str())
        description.pop("truncation", None)
        description.pop("padding", None)
    else:
        description = {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items())}
    blob = json.dumps(description, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def check_max_seq_length(max_seq_length: int, max_position_embeddings: int) -> None:
    """Raises a `UserError` if data.max_seq_length does not fit the model's position table."""
    if max_seq_length > max_position_embeddings:
        raise UserError(
            f"data.max_seq_length={max_seq_length} exceeds the model's "
            f"max_position_embeddings={max_position_embeddings}"
        )
    if max_seq_length < 4:
        raise UserError(
            f"data.max_seq_length={max_seq_length} must be at least 4 ([CLS] and [SEP] take 2 or 3)"
        )


def tokenize(
    examples: list[Example],
    tokenizer,
    max_seq_length: int,
    *,
    batch_size: int = 1000,
    long_inputs: long_inputs_lib.LongInputs = long_inputs_lib.TRUNCATE,
) -> tuple[dict[str, np.ndarray], int]:
    """Tokenizes examples into zero-padded arrays of width `max_seq_length`.

    Pairs are truncated "longest_first", as BERT's GLUE scripts do. The result equals calling the tokenizer
    on each example with `truncation=True, max_length=max_seq_length` and padding the ids. Under another
    `long_inputs` mode a text that does not fit keeps its head and tail, or becomes several rows (windows;
    `jaxft.data.long_inputs`).

    Args:
        examples: Examples; either all have a text pair or none has.
        tokenizer: A fast tokenizer (see `load_tokenizer`).
        max_seq_length: Width of the arrays, special tokens included.
        batch_size: Examples per tokenizer call.
        long_inputs: What a text longer than `max_seq_length` becomes (default: truncated).

    Returns:
        (features, num_truncated): features holds "input_ids" and "token_type_ids" (int32
        [N, max_seq_length], padded with the pad token id and 0) and "length" (int32 [N], tokens before
        padding); num_truncated counts the examples that lost tokens to truncation. With windows the rows
        are windows, and "example_index" (int32 [rows]) gives each one's example.
    """
    num_pairs = sum(example.text_pair is not None for example in examples)
    if num_pairs not in (0, len(examples)):
        raise ValueError(f"{num_pairs} of {len(examples)} examples have a text pair; expected all or none")
    if long_inputs.mode != "truncate":
        return long_inputs_lib.tokenize_long(
            examples, tokenizer, max_seq_length, long_inputs, batch_size=batch_size
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n = len(examples)
    input_ids = np.full((n, max_seq_length), pad_id, np.int32)
    token_type_ids = np.zeros((n, max_seq_length), np.int32)
    lengths = np.zeros(n, np.int32)
    num_truncated = 0
    for start in range(0, n, batch_size):
        chunk = examples[start : start + batch_size]
        texts = [example.text for example in chunk]
        pairs = [example.text_pair for example in chunk] if num_pairs else None
        encoded = tokenizer(
            texts,
            pairs,
            truncation="longest_first" if pairs else True,
            max_length=max_seq_length,
            padding=False,
            return_token_type_ids=True,
            return_attention_mask=False,
        )
        if encoded.encodings is None:
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer")
        rows = zip(encoded["input_ids"], encoded["token_type_ids"], encoded.encodings, strict=True)
        for row, (ids, types, encoding) in enumerate(rows, start=start):
            input_ids[row, : len(ids)] = ids
            token_type_ids[row, : len(types)] = types
            lengths[row] = len(ids)
            # The Rust tokenizer keeps what truncation cut off (for either text of a pair) in `overflowing`:
            # an exact count without tokenizing the split a second time.
            num_truncated += bool(encoding.overflowing)
    if n:
        logger.info(
            "Tokenized %d examples; %d (%.1f%%) were truncated to max_seq_length=%d",
            n,
            num_truncated,
            100.0 * num_truncated / n,
            max_seq_length,
        )
    features = {"input_ids": input_ids, "token_type_ids": token_type_ids, "length": lengths}
    return features, num_truncated


def _content_hash(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        # Length-prefixed fields, so no choice of texts can make two different splits hash alike.
        for value in (example.text, example.text_pair):
            if value is None:
                digest.update(b"N")
            else:
                data = value.encode("utf-8")
                digest.update(b"S" + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def cache_key(
    examples: list[Example],
    tokenizer,
    max_seq_length: int,
    key_parts: dict,
    long_inputs: long_inputs_lib.LongInputs = long_inputs_lib.TRUNCATE,
) -> str:
    """The 16-hex-digit key of a tokenized split: what was tokenized, how, and with which tokenizer.

    `long_inputs` enters the key only when it is not "truncate", and then only the settings that change its
    tokens (`LongInputs.key`): truncated splits keep the keys they always had.
    """
    description = {
        "version": _CACHE_VERSION,
        "key_parts": key_parts,
        "max_seq_length": max_seq_length,
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "vocab_size": getattr(tokenizer, "vocab_size", None),
        # Same path and size, other vocabulary or lower-casing: without this, stale tokens would be reused.
        "tokenizer_fingerprint": fingerprint(tokenizer),
        "content": _content_hash(examples),
    }
    if long_inputs.key() is not None:
        description["long_inputs"] = long_inputs.key()
    blob = json.dumps(description, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def _load_cached(
    path: str, num_examples: int, max_seq_length: int, windows: bool
) -> dict[str, np.ndarray] | None:
    keys = (*_FEATURE_KEYS, _WINDOW_KEY) if windows else _FEATURE_KEYS
    try:
        with np.load(path) as data:
            features = {key: data[key] for key in keys}
            num_truncated = int(data["num_truncated"])
    except Exception as e:  # a cache is disposable: anything unreadable is recomputed
        logger.warning("Ignoring unreadable token cache %s: %s", path, e)
        return None
    rows = len(features[_WINDOW_KEY]) if windows else num_examples
    fits = features["input_ids"].shape == (rows, max_seq_length) and features["length"].shape == (rows,)
    if windows:  # every example has its windows, in order
        fits = fits and np.array_equal(np.unique(features[_WINDOW_KEY]), np.arange(num_examples))
    if not fits:
        logger.warning("Ignoring token cache %s: its shapes do not match the examples", path)
        return None
    logger.info("Loaded tokens from %s (%d of %d examples truncated)", path, num_truncated, num_examples)
    return features


def cached_tokenize(
    examples: list[Example],
    tokenizer,
    max_seq_length: int,
    cache_dir: str | None,
    key_parts: dict,
    long_inputs: long_inputs_lib.LongInputs = long_inputs_lib.TRUNCATE,
) -> dict[str, np.ndarray]:
    """`tokenize`, with the result stored in `cache_dir` and reused when nothing it depends on changed.

    Args:
        examples: As for `tokenize`.
        tokenizer: As for `tokenize`; on a cache hit only what `cache_key` reads (its path, size and
            `fingerprint`).
        max_seq_length: As for `tokenize`.
        cache_dir: Directory of cache files (created if missing); None disables caching.
        key_parts: Anything else that should separate cache entries (e.g. the split name and file path).
            Must be JSON-serialisable (other values are keyed by their `str`).
        long_inputs: As for `tokenize` (part of the key).

    Returns:
        The features of `tokenize`.
    """
    if cache_dir is None:
        return tokenize(examples, tokenizer, max_seq_length, long_inputs=long_inputs)[0]
    key = cache_key(examples, tokenizer, max_seq_length, key_parts, long_inputs)
    path = os.path.join(cache_dir, f"tokens_{key}.npz")
    if os.path.exists(path):
        features = _load_cached(path, len(examples), max_seq_length, long_inputs.mode == "windows")
        if features is not None:
            return features
    features, num_truncated = tokenize(examples, tokenizer, max_seq_length, long_inputs=long_inputs)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        # Write then rename: a crash or a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tokens_", suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, num_truncated=np.int64(num_truncated), **features)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as error:  # a full or read-only disk: one line naming the cache file
        raise files.storage_error(error, path, "writing the token cache") from None
    return features
