"""Records of named fields from JSON lines, Parquet, Arrow, `datasets` directories and `hf:` cached splits.

`records(path, fmt)` yields `(where, record)` per row, `record` a dict of plain Python values (str, int,
float, bool, None, lists and dicts of them), so that every reader of records (classification, multi-label
lists, relation spans, NER / QA prediction input) reads every source the same way:

| source | detected by | `where` |
|---|---|---|
| JSON lines, optionally gzipped | `.jsonl`, `.json` (`.gz`); data.format "jsonl" | `FILE:LINE` |
| Parquet | `.parquet`; data.format "parquet" | `FILE row N` |
| Arrow IPC (stream, as `datasets` writes it, or file) | `.arrow`; data.format "arrow" | `FILE row N` |
| a directory written by `datasets.Dataset.save_to_disk` | its `state.json`; data.format "hf" | `DIR row N` |
| a split in the local `datasets` cache | the `hf:` prefix (any data.format) | `hf:... row N` |

Lines and rows count from 1. A column of `datasets.ClassLabel` ids (or a list of them, as NER tags and
multi-label sets are stored) gives the class names, as TFDS sources do; the id -1 (`datasets`' "no label",
GLUE's test splits) gives None. The features come from the `huggingface` schema metadata that `datasets`
writes into Parquet and Arrow files; files without it are read as their Arrow types say.

`hf:` paths are read with `datasets.load_dataset`, from the local cache only (offline for the duration of the
call; the process environment is left as it was). The rule, with `:` as the only separator:

    hf:NAME:SPLIT           load_dataset(NAME, split=SPLIT)          hf:stanfordnlp/imdb:train
    hf:NAME:CONFIG:SPLIT    load_dataset(NAME, CONFIG, split=SPLIT)  hf:nyu-mll/glue:sst2:validation

NAME is a Hub id (`name` or `owner/name`, a `/` is never a config) or a local directory of data files
(`hf:/data/reviews:train`, loaded as `load_dataset` loads a folder of Parquet / CSV / JSON files). SPLIT may
slice (`train[:1000]`; a colon inside brackets is not a separator). The cache is `$HF_DATASETS_CACHE`, or
`$HF_HOME/datasets` (default ~/.cache/huggingface/datasets), read when the split is loaded.

`datasets` and `pyarrow` are imported only when such a source is read.
"""

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator

from jaxft.config import DATASET_FORMATS
from jaxft.data.lines import check_unicode, numbered_lines, one_line
from jaxft.errors import UserError

HF_PREFIX = "hf:"
FORMATS = ("csv", "tsv", "jsonl", "parquet", "arrow", "hf")  # what data.format may name besides "auto"
RECORD_FORMATS = ("jsonl", "parquet", "arrow", "hf")  # the formats `records` reads
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}  # also gzipped
_BINARY_EXTENSIONS = {".parquet": "parquet", ".arrow": "arrow"}
_SAVED_MARKERS = ("state.json", "dataset_info.json")  # what `save_to_disk` writes beside a Dataset's data
_BATCH_ROWS = 1024
_ROW = re.compile(r" row (\d+)$")
# A colon that separates the parts of an hf: path: not one inside a split's slice brackets (train[:10%]).
_HF_SEPARATOR = re.compile(r":(?![^\[]*\])")


# ---- formats -----------------------------------------------------------------------------------------------


def is_saved_dataset(path: str) -> bool:
    """Whether `path` is a directory written by `datasets.Dataset.save_to_disk`."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in _SAVED_MARKERS)


def detect_format(path: str) -> str | None:
    """The format of `path` by its prefix, directory markers or extension; None when they do not tell."""
    if path.startswith(HF_PREFIX):
        return "hf"
    if os.path.isdir(path):
        return "hf" if is_saved_dataset(path) else None
    ext = os.path.splitext(path)[1].lower()
    if ext in _BINARY_EXTENSIONS:
        return _BINARY_EXTENSIONS[ext]
    stem = path[: -len(".gz")] if path.endswith(".gz") else path
    return _EXTENSIONS.get(os.path.splitext(stem)[1].lower())


def resolve_format(path: str, fmt: str) -> str:
    """The format `path` is read as: `fmt` ("auto": by `detect_format`) as one of `FORMATS`.

    An `hf:` path is "hf" whatever `fmt` says (as a `tfds:` path is TFDS), so one data.format can serve
    files and cached splits.

    Raises:
        UserError: for an unknown `fmt`, a data set's own format, or a path whose format cannot be told.
    """
    if path.startswith(HF_PREFIX):
        return "hf"
    if fmt != "auto":
        if fmt == "json":
            return "jsonl"
        if fmt in DATASET_FORMATS:  # a data set's own format, read by its task (jaxft.data.semeval2010, ...)
            raise UserError(f"{path}: data.format={fmt!r} is read by task.name={DATASET_FORMATS[fmt]!r} only")
        if fmt not in FORMATS:
            raise UserError(f"data.format={fmt!r} is not one of 'auto', {', '.join(map(repr, FORMATS))}")
        return fmt
    detected = detect_format(path)
    if detected is not None:
        return detected
    if os.path.isdir(path):
        raise _not_saved_dataset(
            path, "is a directory, not a data file (nor a save_to_disk directory: no state.json)"
        )
    ext = os.path.splitext(path[: -len(".gz")] if path.endswith(".gz") else path)[1].lower()
    raise UserError(
        f"{path}: cannot tell the format from the extension {ext!r}; set data.format to "
        f"{', '.join(map(repr, FORMATS[:-1]))} or {FORMATS[-1]!r}"
    )


def _not_saved_dataset(path: str, why: str) -> UserError:
    """The error for a directory that `load_from_disk` cannot read as one Dataset; a DatasetDict's names its
    splits (save_to_disk of a DatasetDict writes dataset_dict.json and a directory per split)."""
    try:
        with open(os.path.join(path, "dataset_dict.json"), encoding="utf-8") as f:
            splits = json.load(f).get("splits")
    except (OSError, ValueError, AttributeError):
        splits = None
    if isinstance(splits, list) and splits:
        return UserError(
            f"{path}: a DatasetDict saved with save_to_disk (splits {', '.join(map(str, splits))}); give the "
            f"directory of one split, e.g. {os.path.join(path, str(splits[0]))}"
        )
    return UserError(f"{path}: {why}")


def source_of(where: str) -> str:
    """The file (directory, hf: path) of a `where`: "FILE:LINE" or "FILE row N" -> "FILE"."""
    match = _ROW.search(where)
    if match:
        return where[: match.start()]
    head, _, tail = where.rpartition(":")
    return head if head and tail.isdigit() else where


# ---- reading -----------------------------------------------------------------------------------------------


def records(path: str, fmt: str = "auto") -> Iterator[tuple[str, dict]]:
    """Yields (where, record) for each record of `path`, in stored order (see the module docstring).

    Args:
        path: A file, a `save_to_disk` directory or an `hf:` path; `$VARS` and `~` are expanded.
        fmt: data.format: "auto" or one of `RECORD_FORMATS` ("json" is "jsonl").

    Yields:
        ("FILE:LINE" or "FILE row N", the record as a dict of plain Python values). Blank JSONL lines are
        skipped.

    Raises:
        UserError: naming the file (and line or row) of the first problem: a missing file, bytes that are not
            UTF-8, invalid JSON, a line that is not an object, an unreadable Parquet / Arrow file, a split
            that is not in the `datasets` cache, a ClassLabel id outside its names.
    """
    path = os.path.expanduser(os.path.expandvars(path))
    fmt = resolve_format(path, fmt)
    if fmt not in RECORD_FORMATS:
        raise UserError(
            f"{path}: a {fmt.upper()} file holds no records; records are read from JSONL, "
            "Parquet, Arrow or datasets sources"
        )
    if fmt == "jsonl":
        if os.path.isdir(path):
            raise UserError(f"{path}: is a directory, expected a data file")
        yield from _json_objects(path)
        return
    if path.startswith(HF_PREFIX):
        yield from _dataset_rows(path, _load_hub(path))
        return
    if fmt == "hf":
        yield from _dataset_rows(path, _load_from_disk(path))
        return
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, expected a {fmt.capitalize()} file")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    yield from (_parquet_rows if fmt == "parquet" else _arrow_rows)(path)


def _json_objects(path: str) -> Iterator[tuple[str, dict]]:
    """A line that is not valid JSON, or not an object, is a `UserError` naming its line."""
    first = True
    for line, text in numbered_lines(path):
        if not text.strip():
            continue
        where = f"{path}:{line}"
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            hint = ""
            if first and text.lstrip().startswith("["):
                hint = " — expected JSON lines (one object per line), not a JSON array"
            raise UserError(f"{where}: invalid JSON ({e.msg}, column {e.colno}){hint}") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, found {type_name(record)}")
        first = False
        yield where, record


def _table_rows(name: str, batches, features, read_error: str) -> Iterator[tuple[str, dict]]:
    """Rows of Arrow record batches (or tables) as dicts, ClassLabel ids named; `name row N` each."""
    converters = _class_label_converters(features)
    row = 0
    try:
        for batch in batches:
            for record in batch.to_pylist():
                row += 1
                where = f"{name} row {row}"
                for column, convert in converters.items():
                    if column in record:
                        record[column] = convert(record[column], where, column)
                yield where, record
    except (OSError, ValueError) as e:  # pyarrow's errors (ArrowInvalid, ArrowIOError) derive from these
        raise UserError(f"{name}: {read_error} after row {row}: {one_line(e)}") from None


def _hf_features(schema):
    """`datasets.Features` from the schema metadata `datasets` writes, or None for files without it."""
    if not schema.metadata or b"huggingface" not in schema.metadata:
        return None
    import datasets  # deferred: only files written by datasets carry its features

    return datasets.Features.from_arrow_schema(schema)


def _parquet_rows(path: str) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq  # deferred: only Parquet sources need it

    try:
        source = pq.ParquetFile(path)
        features = _hf_features(source.schema_arrow)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the Parquet file: {one_line(e)}") from None
    yield from _table_rows(
        path, source.iter_batches(batch_size=_BATCH_ROWS), features, "cannot read the file"
    )


def _arrow_rows(path: str) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa  # deferred: only Arrow sources need it

    try:
        with open(path, "rb") as f:
            is_file_format = f.read(6) == b"ARROW1"  # the IPC file format's magic; streams have none
        source = pa.memory_map(path)
        if is_file_format:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            reader = batches = pa.ipc.open_stream(source)
        features = _hf_features(reader.schema)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the Arrow file: {one_line(e)}") from None
    yield from _table_rows(path, batches, features, "cannot read the file")


def _dataset_rows(name: str, dataset) -> Iterator[tuple[str, dict]]:
    # The Arrow format gives tables through any indices mapping (a selected or shuffled Dataset).
    batches = dataset.with_format("arrow").iter(batch_size=_BATCH_ROWS)
    yield from _table_rows(name, batches, dataset.features, "cannot read the data set")


def _load_from_disk(path: str):
    if not os.path.exists(path):
        raise UserError(f"{path}: no such directory")
    if not is_saved_dataset(path):
        raise _not_saved_dataset(path, "not a directory written by datasets' save_to_disk (no state.json)")
    import datasets  # deferred: only datasets sources need it

    try:
        return datasets.load_from_disk(path)
    except Exception as e:  # datasets raises its own types for broken directories
        raise UserError(f"{path}: cannot load the saved data set: {one_line(e)}") from None


# ---- hf: paths --------------------------------------------------------------------------------------------


def parse_hf(spec: str) -> tuple[str, str | None, str]:
    """`hf:NAME[:CONFIG]:SPLIT` -> (NAME, CONFIG or None, SPLIT); see the module docstring for the rule.

    Raises:
        UserError: for any other number of parts, or an empty one.
    """
    parts = _HF_SEPARATOR.split(spec[len(HF_PREFIX) :])
    if len(parts) not in (2, 3) or not all(part.strip() for part in parts):
        raise UserError(
            f"{spec}: an hf: path is hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT, e.g. hf:stanfordnlp/imdb:train "
            "or hf:nyu-mll/glue:sst2:validation"
        )
    if len(parts) == 2:
        return parts[0], None, parts[1]
    return parts[0], parts[1], parts[2]


def datasets_cache() -> str:
    """The `datasets` cache as the environment names it now (not as when `datasets` was imported)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return os.path.expanduser(os.environ["HF_DATASETS_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return os.path.join(os.path.expanduser(home), "datasets")


@contextlib.contextmanager
def _offline(datasets):
    """`HF_DATASETS_OFFLINE=1` for this call only: the libraries read the variables at import, so their
    module flags are set instead, then restored, as are datasets' log level and progress bars."""
    import huggingface_hub.constants as hub

    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE)
    verbosity = datasets.logging.get_verbosity()
    bars_off = datasets.utils.are_progress_bars_disabled()
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = hub.HF_HUB_OFFLINE = True
    datasets.logging.set_verbosity_error()  # not "Using the latest cached version ... (offline mode)"
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE = saved
        datasets.logging.set_verbosity(verbosity)
        if not bars_off:
            datasets.enable_progress_bars()


def _is_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.isdir(name)


def _load_hub(spec: str):
    """The Dataset of an `hf:` path, from the local cache (or a local directory of data files) only."""
    name, config, split = parse_hf(spec)
    name = os.path.expanduser(name)
    local = _is_local(name)
    if local and not os.path.isdir(name):
        raise UserError(f"{spec}: no such directory {name}")
    cache = datasets_cache()
    import datasets  # deferred: only hf: sources need it

    with _offline(datasets):
        try:
            return datasets.load_dataset(
                name, config, split=split, cache_dir=cache, download_mode="reuse_dataset_if_exists"
            )
        except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError)
            detail = "" if isinstance(e, ConnectionError) else f" ({one_line(e)})"
            if local:
                raise UserError(f"{spec}: cannot load the data files in {name}{detail}") from None
            raise UserError(
                f"{spec}: not in the datasets cache {cache}{detail}; jaxft reads hf: paths offline: load the "
                "split once with datasets.load_dataset while online, or set HF_DATASETS_CACHE (or HF_HOME) "
                "to the cache that holds it"
            ) from None


# ---- ClassLabel ids -> names ------------------------------------------------------------------------------


def _class_label_converters(features) -> dict[str, Callable]:
    """{column: convert(value, where, column)} for the columns that hold ClassLabel ids."""
    if not features:
        return {}
    converters = {}
    for column, feature in features.items():
        convert = _converter(feature)
        if convert is not None:
            converters[column] = convert
    return converters


def _converter(feature) -> Callable | None:
    import datasets  # features exist only where datasets wrote them, so it is importable here

    if isinstance(feature, datasets.ClassLabel):
        names = feature.names

        def name(value, where, column):
            if value is None or value == -1:  # datasets' id of "no label"
                return None
            if not isinstance(value, int) or not 0 <= value < len(names):
                raise UserError(
                    f"{where}: {column!r} holds the ClassLabel id {value!r}, not one of 0..{len(names) - 1}"
                )
            return names[value]

        return name
    if isinstance(feature, dict):
        inner = {key: _converter(value) for key, value in feature.items()}
        inner = {key: convert for key, convert in inner.items() if convert is not None}
        if not inner:
            return None
        return lambda value, where, column: (
            value
            if not isinstance(value, dict)
            else {k: inner[k](v, where, f"{column}.{k}") if k in inner else v for k, v in value.items()}
        )
    element = (
        feature[0] if isinstance(feature, list) and len(feature) == 1 else getattr(feature, "feature", None)
    )
    convert = None if element is None else _converter(element)
    if convert is None:
        return None
    return lambda value, where, column: (
        value if not isinstance(value, list) else [convert(v, where, column) for v in value]
    )


# ---- fields ------------------------------------------------------------------------------------------------

_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def type_name(value) -> str:
    """How a message names the type of a record's value ("a string", "an array", "bytes", ...)."""
    return _TYPES.get(type(value), type(value).__name__)


def field(where: str, record: dict, key: str, option: str):
    """The value of `key` in `record`; a missing key is a `UserError` naming `where`, key and option."""
    if key not in record:
        noun = "column" if _ROW.search(where) else "key"
        keys = ", ".join(map(repr, record)) or "none"
        raise UserError(f"{where}: no {noun} {key!r} ({option}); the {noun}s are {keys}")
    return record[key]


def string_field(where: str, record: dict, key: str | None, option: str, required: bool) -> str | None:
    """The value of `key` as a string; None when no key is configured, or it is absent (and not required).

    Numbers and booleans become the string a JSON file spells them with (1 and 1.0 are one JSON number, so
    one label, "1"); anything else but a string or None is a `UserError` naming `where`.
    """
    if key is None or (key not in record and not required):
        return None
    value = field(where, record, key, option)
    if value is None or isinstance(value, str):
        return value if value is None else check_unicode(where, value, f"{key!r} ({option})")
    if isinstance(value, bool):
        return json.dumps(value)  # true / false, as the file spells them
    if isinstance(value, int | float):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    raise UserError(f"{where}: {key!r} ({option}) must be a string, found {type_name(value)}")
