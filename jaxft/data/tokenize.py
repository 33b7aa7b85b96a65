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
from jaxft.data.readers import Example
from jaxft.errors import UserError

logger = logging.getLogger(__name__)

_CACHE_VERSION = 1  # bump when the cached arrays change meaning
_FEATURE_KEYS = ("input_ids", "token_type_ids", "length")


def load_tokenizer(path: str):
    """Loads a fast tokenizer from a local directory (never from the network).

    Args:
        path: Directory with tokenizer.json or vocab.txt plus tokenizer_config.json; environment variables
            and `~` are expanded.

    Returns:
        A `transformers` fast tokenizer.

    Raises:
        UserError: If the directory is missing, holds no loadable tokenizer, or only a slow one.
    """
    import transformers  # deferred: importing transformers takes seconds and most callers never need it

    from jaxft.models.convert import resolve_model_dir

    path = resolve_model_dir(os.path.expanduser(os.path.expandvars(path)))
    if not os.path.isdir(path):
        raise UserError(f"{path}: no such tokenizer directory (model.tokenizer / model.checkpoint)")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError) for a bad dir
        raise UserError(f"{path}: cannot load a tokenizer: {' '.join(str(e).split())}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{path}: {type(tokenizer).__name__} is not a fast tokenizer; add a tokenizer.json")
    return tokenizer


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
    examples: list[Example], tokenizer, max_seq_length: int, *, batch_size: int = 1000
) -> tuple[dict[str, np.ndarray], int]:
    """Tokenizes examples into zero-padded arrays of width `max_seq_length`.

    Pairs are truncated "longest_first", as BERT's GLUE scripts do. The result equals calling the tokenizer
    on each example with `truncation=True, max_length=max_seq_length` and padding the ids.

    Args:
        examples: Examples; either all have a text pair or none has.
        tokenizer: A fast tokenizer (see `load_tokenizer`).
        max_seq_length: Width of the arrays, special tokens included.
        batch_size: Examples per tokenizer call.

    Returns:
        (features, num_truncated): features holds "input_ids" and "token_type_ids" (int32
        [N, max_seq_length], padded with the pad token id and 0) and "length" (int32 [N], tokens before
        padding); num_truncated counts the examples that lost tokens to truncation.
    """
    num_pairs = sum(example.text_pair is not None for example in examples)
    if num_pairs not in (0, len(examples)):
        raise ValueError(f"{num_pairs} of {len(examples)} examples have a text pair; expected all or none")
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


def cache_key(examples: list[Example], tokenizer, max_seq_length: int, key_parts: dict) -> str:
    """The 16-hex-digit key of a tokenized split: what was tokenized, how, and with which tokenizer."""
    description = {
        "version": _CACHE_VERSION,
        "key_parts": key_parts,
        "max_seq_length": max_seq_length,
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "vocab_size": getattr(tokenizer, "vocab_size", None),
        "content": _content_hash(examples),
    }
    blob = json.dumps(description, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def _load_cached(path: str, num_examples: int, max_seq_length: int) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as data:
            features = {key: data[key] for key in _FEATURE_KEYS}
            num_truncated = int(data["num_truncated"])
    except Exception as e:  # a cache is disposable: anything unreadable is recomputed
        logger.warning("Ignoring unreadable token cache %s: %s", path, e)
        return None
    if features["input_ids"].shape != (num_examples, max_seq_length) or features["length"].shape != (
        num_examples,
    ):
        logger.warning("Ignoring token cache %s: its shapes do not match the examples", path)
        return None
    logger.info("Loaded tokens from %s (%d of %d examples truncated)", path, num_truncated, num_examples)
    return features


def cached_tokenize(
    examples: list[Example], tokenizer, max_seq_length: int, cache_dir: str | None, key_parts: dict
) -> dict[str, np.ndarray]:
    """`tokenize`, with the result stored in `cache_dir` and reused when nothing it depends on changed.

    Args:
        examples: As for `tokenize`.
        tokenizer: As for `tokenize`; only its `name_or_path` and `vocab_size` are read on a cache hit.
        max_seq_length: As for `tokenize`.
        cache_dir: Directory of cache files (created if missing); None disables caching.
        key_parts: Anything else that should separate cache entries (e.g. the split name and file path).
            Must be JSON-serialisable (other values are keyed by their `str`).

    Returns:
        The features of `tokenize`.
    """
    if cache_dir is None:
        return tokenize(examples, tokenizer, max_seq_length)[0]
    path = os.path.join(cache_dir, f"tokens_{cache_key(examples, tokenizer, max_seq_length, key_parts)}.npz")
    if os.path.exists(path):
        features = _load_cached(path, len(examples), max_seq_length)
        if features is not None:
            return features
    features, num_truncated = tokenize(examples, tokenizer, max_seq_length)
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
