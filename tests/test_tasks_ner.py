"""NER: CoNLL reading (IOB1 -> IOB2, bad lines), word <-> sub-token alignment, truncated words predicted "O",
seqeval-equal reports, a tiny end-to-end run, prediction and export to BertForTokenClassification."""

import json
import types

import numpy as np
import pytest
import seqeval.metrics
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2

from jaxft import predict, tasks
from jaxft.configs import conll03
from jaxft.data import conll, tokenize
from jaxft.errors import UserError
from jaxft.tasks import IGNORE, tagging
from jaxft.tasks.ner import Ner, entity_report
from jaxft.training import train
from tests.helpers import check_final_examples

WORDS = "the film was great and you got two hours of book staff room after first week".split()
TYPES = ("PER", "LOC", "ORG")


def _sentences(seed: int, count: int, long_every: int = 0):
    """Random sentences as (words, IOB1 tags): entities of 1-2 words, adjacent same-type ones marked B-."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = 40 if long_every and i % long_every == 0 else int(rng.integers(3, 10))  # 40 words > 32 tokens
        words, tags = [str(w) for w in rng.choice(WORDS, n)], []
        while len(tags) < n:
            if rng.random() < 0.3:
                kind = str(rng.choice(TYPES))
                length = min(int(rng.integers(1, 3)), n - len(tags))
                first = "B" if tags and tags[-1][2:] == kind else "I"  # IOB1
                tags += [f"{first}-{kind}"] + [f"I-{kind}"] * (length - 1)
            else:
                tags.append("O")
        out.append((words, tags))
    return out


def _conll(sentences, docstart=True) -> str:
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for words, tags in sentences:
        lines += [f"{w} NN I-NP {t}" for w, t in zip(words, tags, strict=True)] + [""]
    return "\n".join(lines) + "\n"


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---- reading -------------------------------------------------------------------------------------------


def test_read_conll_converts_iob1_and_skips_docstart(tmp_path):
    # Invented sentences in CoNLL-2003's column layout (the real corpus is never copied into the repo).
    text = "-DOCSTART- -X- -X- O\n\nAcme NNP I-NP I-ORG\nhires VBZ I-VP O\nDanish JJ I-NP I-MISC\n\n"
    text += "Mara NNP I-NP I-PER\nQuist NNP I-NP I-PER\nI-PER NNP I-NP B-PER\n"
    path = _write(tmp_path / "eng.train", text)
    sentences = conll.read_conll(path, scheme="iob1")
    assert [s.words for s in sentences] == [("Acme", "hires", "Danish"), ("Mara", "Quist", "I-PER")]
    assert sentences[0].tags == ("B-ORG", "O", "B-MISC")
    assert sentences[1].tags == ("B-PER", "I-PER", "B-PER")
    assert sentences[1].source == f"{path}:7" and sentences[1].where(2) == f"{path}:9"
    assert conll.read_conll(path, scheme="iob2")[0].tags == ("I-ORG", "O", "I-MISC")  # taken as is


@pytest.mark.parametrize("seed", range(5))
def test_iob1_to_iob2_keeps_the_entities(seed):
    for _, tags in _sentences(seed, 20):
        converted = conll.iob1_to_iob2(tags)
        previous = ["O", *converted[:-1]]
        assert all(not t.startswith("I-") or p[2:] == t[2:] for p, t in zip(previous, converted, strict=True))
        assert get_entities(converted) == get_entities(tags)  # seqeval's lenient reading of the IOB1 tags


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("a NN O\nb NN\n", 2, ["expected 3 columns", "found 2"]),
        ("a NN O\n\nb NN X-PER\n", 3, ["'X-PER'", "B-TYPE"]),
        ("a\n", 1, ["1 column"]),
    ],
    ids=["column-count", "bad-tag", "one-column"],
)
def test_read_conll_refuses_bad_lines_naming_the_line(tmp_path, text, line, words):
    path = _write(tmp_path / "bad.conll", text)
    with pytest.raises(UserError) as info:
        conll.read_conll(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ") and "\n" not in message
    assert all(word in message for word in words), message


@pytest.mark.parametrize("column", [7, 3, -4, 0])
def test_a_tag_column_outside_the_lines_is_refused(tmp_path, column):
    path = _write(tmp_path / "three.conll", "a NN O\nb NN B-PER\n")
    with pytest.raises(UserError, match=f"three.conll:1: task.tag_column={column} is outside the line's 3"):
        conll.read_conll(path, tag_column=column)
    assert [s.tags for s in conll.read_conll(path, tag_column=2)] == [("O", "B-PER")]
    assert [s.words for s in conll.read_conll(path, tag_column=column, require_tags=False)] == [("a", "b")]


def test_tag_vocab_has_o_and_both_prefixes_of_every_type():
    sentences = [
        conll.Sentence(("a", "b"), ("B-PER", "O"), "f:1"),
        conll.Sentence(("c",), ("B-LOC",), "f:4"),
    ]
    assert tagging.tag_vocab(sentences) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    with pytest.raises(
        UserError, match=r"f:5: tag 'B-ORG' \(in IOB2, as tags are read\) is not in the tag set"
    ):
        tagging.encode_tags([conll.Sentence(("x", "y"), ("O", "B-ORG"), "f:4")], ["O", "B-PER", "I-PER"])


# ---- alignment and truncation --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return tokenize.load_tokenizer(tiny_tokenizer_dir)


@pytest.mark.parametrize("subword", ["first", "all"])
def test_alignment_labels_the_first_or_every_sub_token(tokenizer, subword):
    names = ["O", "B-PER", "I-PER"]
    sentence = conll.Sentence(("the", "cats", "sat"), ("O", "B-PER", "O"), "f:1")  # cats -> cat ##s
    tags = tagging.encode_tags([sentence], names)
    features = tagging.tokenize_words(
        [sentence], tokenizer, 8, tags, subword_labels=subword, continuation=tagging.continuation_ids(names)
    )
    assert features["length"][0] == 6  # [CLS] the cat ##s sat [SEP]
    expected = [IGNORE, 0, 1, IGNORE if subword == "first" else 2, 0, IGNORE, IGNORE, IGNORE]
    assert features["labels"][0].tolist() == expected
    assert features["word_index"][0].tolist() == [-1, 0, 1, -1, 2, -1, -1, -1]


def test_truncated_words_are_predicted_o_and_still_counted(tokenizer):
    names = ["O", "B-PER", "I-PER"]
    words = ("the", "cat") * 5  # 10 words; max_seq_length 6 keeps 4 of them
    gold = ("O", "B-PER") * 5
    sentence = conll.Sentence(words, gold, "f:1")
    features = tagging.tokenize_words([sentence], tokenizer, 6, tagging.encode_tags([sentence], names))
    perfect = np.where(features["labels"] == IGNORE, 0, features["labels"])  # right wherever it can see
    predicted = tagging.word_predictions(sentence, perfect[0], features["word_index"][0], names)
    assert predicted == ["O", "B-PER"] * 2 + ["O"] * 6
    report, _ = entity_report([list(gold)], [predicted])
    assert report["PER"]["support"] == 5 and report["PER"]["recall"] == pytest.approx(2 / 5)


# ---- reports -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_entity_report_equals_seqeval_strict_iob2(seed):
    gold = [conll.iob1_to_iob2(tags) for _, tags in _sentences(seed, 30)]
    rng = np.random.default_rng(seed + 100)
    predicted = [list(tags) for tags in gold]
    for tags in predicted:  # corrupt some: wrong type, lost B-, spurious I- (invalid in strict IOB2)
        for i in range(len(tags)):
            if rng.random() < 0.15:
                tags[i] = str(rng.choice(["O", "B-PER", "I-LOC", "I-ORG", "B-ORG"]))
    report, text = entity_report(gold, predicted)
    kwargs = dict(mode="strict", scheme=IOB2, zero_division=0, digits=4)
    assert report == seqeval.metrics.classification_report(gold, predicted, output_dict=True, **kwargs)
    assert text == seqeval.metrics.classification_report(gold, predicted, **kwargs)


def test_task_report_reads_words_from_placed_predictions(tokenizer):
    """The host report from device-style totals equals seqeval on the word tags they mean."""
    names = ["O", "B-PER", "I-PER"]
    sentences = [
        conll.Sentence(("the", "cats", "sat"), ("O", "B-PER", "O"), "f:1"),
        conll.Sentence(("a", "dog", "cat"), ("B-PER", "I-PER", "O"), "f:5"),
    ]
    task = Ner(max_seq_length=8)
    features = tagging.tokenize_words(sentences, tokenizer, 8, tagging.encode_tags(sentences, names))
    # Per position: sentence 1 right at first sub-tokens (its "##s" says I-PER: never read); sentence 2 wrong.
    predictions = np.array([[0, 0, 1, 2, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]], np.int32)
    split = types.SimpleNamespace(examples=sentences, features=features)
    totals = {"loss_sum": 3.0, "count": 6.0, tasks.PER_EXAMPLE: {"prediction": predictions}}
    result = task.report(totals, split, names, None)
    gold = [list(s.tags) for s in sentences]
    predicted = [["O", "B-PER", "O"], ["B-PER", "B-PER", "O"]]
    expected = seqeval.metrics.classification_report(
        gold, predicted, mode="strict", scheme=IOB2, output_dict=True
    )
    assert result.report == expected
    assert result.metrics["accuracy"] == seqeval.metrics.accuracy_score(gold, predicted) == 5 / 6
    assert result.metrics["f1"] == expected["micro avg"]["f1-score"] and result.metrics["loss"] == 0.5
    assert result.metrics["num_examples"] == 2 and result.extra["num_entities"] == 2


# ---- the whole job -------------------------------------------------------------------------------------


def _config(tmp_path, **overrides):
    config = conll03.get_config("tiny")
    config.data.train_path = _write(tmp_path / "eng.train", _conll(_sentences(0, 48)))
    config.data.eval_path = _write(tmp_path / "eng.testa", _conll(_sentences(1, 20, long_every=7)))
    config.data.test_path = None
    config.training.num_train_steps = 4
    config.training.eval_every = 4
    config.training.checkpoint_every = 4
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        config[section][key] = value
    return config


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ner")
    config = _config(tmp_path)
    final = train.train_and_evaluate(config, str(tmp_path / "run"))
    return tmp_path / "run", config, final


def test_end_to_end_report_counts_every_entity(ner_run):
    workdir, config, final = ner_run
    for name in ("config.json", "labels.json", "final_metrics.json", "eval/eval_step00000004.json"):
        assert (workdir / name).exists(), name
    labels = json.loads((workdir / "labels.json").read_text())["labels"]
    assert labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    saved = json.loads((workdir / "eval/final_eval.json").read_text())
    gold = [conll.iob1_to_iob2(tags) for _, tags in _sentences(1, 20, long_every=7)]
    assert saved["report"]["micro avg"]["support"] == sum(len(get_entities(t)) for t in gold)
    assert saved["num_entities"] == saved["report"]["micro avg"]["support"]
    assert saved["num_words"] == sum(map(len, gold)) and saved["task"] == "ner"
    assert set(final["eval"]) == {"f1", "precision", "recall", "accuracy", "loss", "num_examples"}
    assert final["eval"]["num_examples"] == 20 and final["eval"]["accuracy"] == saved["accuracy"]
    check_final_examples(str(workdir), final["eval"], "ner", 20)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [4]


def test_predict_gives_a_tag_per_word_and_entities(ner_run, tmp_path):
    workdir, _, _ = ner_run
    source = _write(tmp_path / "in.conll", "the\nfilm\n\n" + "\n".join(["great"] * 40) + "\n")
    out = tmp_path / "out.jsonl"
    assert predict.main(["--workdir", str(workdir), "--input", source, "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["words"]) for r in rows] == [2, 40] and [len(r["tags"]) for r in rows] == [2, 40]
    assert rows[1]["tags"][-10:] == ["O"] * 10  # beyond max_seq_length=32
    for row in rows:
        for entity in row["entities"]:
            assert row["tags"][entity["start"]] == "B-" + entity["type"]
    text_input = _write(tmp_path / "in.jsonl", json.dumps({"text": "the film was great"}) + "\n")
    assert predict.main(["--workdir", str(workdir), "--input", text_input, "--output", str(out)]) == 0
    assert json.loads(out.read_text())["words"] == ["the", "film", "was", "great"]


def test_export_loads_as_bert_for_token_classification_with_equal_logits(ner_run, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxft import export

    workdir, _, _ = ner_run
    out = export.export(str(workdir), str(tmp_path / "hf"))
    model = transformers.BertForTokenClassification.from_pretrained(out).eval()
    assert model.config.id2label[1] == "B-LOC"
    run = predict.load_run(str(workdir))
    ours = train.create_model(run.config, run.bert_config, len(run.label_names))
    ids = np.array([[2, 40, 41, 42, 3, 0]], np.int32)
    mask = (ids != 0).astype(np.int32)
    expected = np.asarray(ours.apply({"params": run.params}, ids, mask, np.zeros_like(ids)))
    with torch.no_grad():
        theirs = model(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)
        ).logits
    np.testing.assert_allclose(expected[mask == 1], theirs.numpy()[mask == 1], atol=1e-4, rtol=0)


# ---- bad input: one line naming file and line, nothing written -----------------------------------------


def _fails(config, workdir, *words):
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(config, str(workdir))
    message = str(info.value)
    assert "\n" not in message and all(word in message for word in words), message
    assert not workdir.exists()


def test_bad_conll_lines_fail_before_anything_is_written(tmp_path):
    bad = _write(tmp_path / "bad.train", "a NN I-NP O\nb NN I-NP\n")
    _fails(_config(tmp_path, **{"data.train_path": bad}), tmp_path / "w1", f"{bad}:2:", "columns")
    unknown = _write(tmp_path / "dev", "a NN I-NP O\n\nb NN I-NP I-DATE\n")  # a type train never had
    _fails(_config(tmp_path, **{"data.eval_path": unknown}), tmp_path / "w2", f"{unknown}:3:", "'B-DATE'")
    _fails(_config(tmp_path, **{"task.subword_labels": "last"}), tmp_path / "w3", "task.subword_labels")
    _fails(_config(tmp_path, **{"data.text_pair_field": "x"}), tmp_path / "w4", "data.text_pair_field")
