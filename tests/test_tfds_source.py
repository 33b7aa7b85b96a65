"""TFDS splits as a data source, read without TensorFlow, on TFDS's own mock data."""

import sys

import pytest

from jaxft.data import readers
from jaxft.errors import UserError

tfds = pytest.importorskip("tensorflow_datasets")


def test_reads_mock_glue_sst2_with_class_names():
    with tfds.testing.mock_data(num_examples=6):
        examples = readers.read_examples("tfds:glue/sst2:train", text_field="sentence", label_field="label")
    assert len(examples) == 6
    assert all(isinstance(e.text, str) and e.text for e in examples)
    assert {e.label for e in examples} <= {"negative", "positive"}
    assert examples[0].source == "tfds:glue/sst2:train#0"
    assert "tensorflow" not in sys.modules  # TFDS without TensorFlow


def test_pairs_and_errors():
    with tfds.testing.mock_data(num_examples=3):
        pairs = readers.read_examples(
            "tfds:glue/mrpc:train", text_field="sentence1", text_pair_field="sentence2", label_field="label"
        )
        assert all(e.text_pair for e in pairs)
        with pytest.raises(UserError, match="no feature 'text'"):
            readers.read_examples("tfds:glue/sst2:train", text_field="text", label_field="label")
    with pytest.raises(UserError, match="tfds:NAME"):
        readers.read_examples("tfds:glue/sst2", text_field="sentence", label_field="label")
