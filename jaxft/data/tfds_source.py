"""TensorFlow Datasets as a data source, without TensorFlow: `tfds:NAME[/CONFIG]:SPLIT` as a data path.

    --config.data.train_path=tfds:glue/sst2:train --config.data.eval_path=tfds:glue/sst2:validation \
    --config.data.text_field=sentence

Read through `tfds.data_source` (random access over array_record files), the one TFDS reader that works
without TensorFlow (ENVIRONMENT.md); the dataset must already be prepared under TFDS's data dir
(`$TFDS_DATA_DIR`, default ~/tensorflow_datasets). Text comes back as bytes from real data and as str from
`tfds.testing.mock_data`; both become str. ClassLabel values become their names (e.g. "negative").
Install with `pip install 'jaxft[tfds]'`; TensorFlow itself is never needed.
"""

import importlib

import numpy as np

from jaxft.data.readers import Example
from jaxft.errors import UserError

PREFIX = "tfds:"

# TFDS registers its classic dataset modules only when imported; these are the ones users ask for here.
_MODULES = (
    "tensorflow_datasets.text.glue",
    "tensorflow_datasets.text.imdb",
    "tensorflow_datasets.text.conll2003",
    "tensorflow_datasets.question_answering.squad",
)


def parse(spec: str) -> tuple[str, str]:
    """`tfds:glue/sst2:train` -> ("glue/sst2", "train")."""
    body = spec[len(PREFIX) :]
    name, _, split = body.rpartition(":")
    if not name or not split:
        raise UserError(f"{spec}: a TFDS path is tfds:NAME[/CONFIG]:SPLIT, e.g. tfds:glue/sst2:train")
    return name, split


def _text(value, where: str, field: str) -> str:
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{where}: field {field!r} is not valid UTF-8") from None
    return str(value).strip()


def read_tfds(
    spec: str,
    *,
    text_field: str,
    label_field: str | None,
    text_pair_field: str | None = None,
    require_label: bool = True,
) -> list[Example]:
    """Reads every example of a TFDS split (see the module docstring for the path form)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(
            f"{spec}: TFDS sources need tensorflow-datasets (pip install 'jaxft[tfds]')"
        ) from None
    name, split = parse(spec)
    for module in _MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    try:
        builder = tfds.builder(name)
        source = tfds.data_source(name, split=split)
    except Exception as error:  # TFDS raises its own types for unknown names, splits and unprepared data
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{spec}: cannot open the TFDS split ({first})") from None
    features = builder.info.features
    for field in (text_field, text_pair_field, label_field):
        if field is not None and field not in features:
            raise UserError(f"{spec}: no feature {field!r}; the features are {', '.join(features.keys())}")
    names = getattr(features[label_field], "names", None) if label_field else None
    examples = []
    for i in range(len(source)):
        record, where = source[i], f"{spec}#{i}"
        text = _text(record[text_field], where, text_field)
        pair = _text(record[text_pair_field], where, text_pair_field) if text_pair_field else None
        if not text or (text_pair_field and not pair):
            raise UserError(f"{where}: empty text")
        label = None
        if label_field is not None:
            value = np.asarray(record[label_field]).item()
            label = (
                names[value]
                if names and isinstance(value, int) and value >= 0
                else _text(value, where, "label")
            )
            if require_label and (label == "" or (isinstance(value, int) and value < 0)):
                raise UserError(f"{where}: no label (an unlabelled split? GLUE test splits have label -1)")
        examples.append(Example(text=text, text_pair=pair, label=label, source=where))
    if not examples:
        raise UserError(f"{spec}: the split contains no examples")
    return examples
