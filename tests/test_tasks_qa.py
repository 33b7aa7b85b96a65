"""Extractive QA: the official SQuAD v1.1 EM / F1 on hand-computed cases, SQuAD reading, windows and their
answer positions, n-best decoding across windows, one answer per question on any device count, a tiny
end-to-end run, prediction and export to BertForQuestionAnswering."""

import json
import os

import jax
import numpy as np
import pytest

from jaxft import predict
from jaxft.configs import squad as squad_config
from jaxft.data import squad as squad_data
from jaxft.data import tokenize
from jaxft.errors import UserError
from jaxft.tasks import squad
from jaxft.training import parallel, pipeline, steps, train, trained
from tests.helpers import check_final_examples

WORDS = "the film was great and you got two hours of book staff room after first week".split()


# ---- the official evaluation ---------------------------------------------------------------------------


def test_normalisation_and_scores_by_hand():
    assert squad.normalize_answer("The  Quick, brown (fox)!") == "quick brown fox"
    assert squad.normalize_answer("An apple a day") == "apple day"
    assert squad.normalize_answer("theatre") == "theatre"  # an article only as a whole word
    assert squad.exact_match("An apple.", "apple") == 1.0
    assert squad.f1("the cat sat", "a cat sat on the mat") == pytest.approx(2 / 3)  # P 2/2, R 2/4
    assert squad.f1("cat cat", "cat") == pytest.approx(2 / 3)  # counts are clipped: P 1/2, R 1/1
    assert squad.f1("dog", "cat") == 0.0 and squad.f1("", "cat") == 0.0


def test_squad_scores_take_the_best_gold_answer_and_average_over_questions():
    def example(qid, *answers):
        return squad_data.QAExample(qid, "q?", "c", tuple((a, 0) for a in answers), qid)

    examples = [
        example("1", "Red Kites", "The Red Kites"),
        example("2", "Port Ellen, Islay"),
        example("3", "1990"),
    ]
    predictions = {"1": "red kites.", "2": "Port Ellen", "3": "in 1991"}
    scores = squad.squad_scores(predictions, examples)
    # EM: 1, 0, 0. F1: 1; P 2/2 R 2/3 -> 0.8; 0.
    assert scores == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(60.0), "num_questions": 3}
    assert squad.squad_scores({"1": "Red Kites"}, examples)["f1"] == pytest.approx(100 / 3)  # unanswered: 0


# ---- reading, windows, decoding ------------------------------------------------------------------------


def _squad_json(seed: int, count: int, context_words: tuple[int, int] = (30, 60)) -> dict:
    rng = np.random.default_rng(seed)
    paragraphs = []
    for i in range(count):
        words = [str(w) for w in rng.choice(WORDS, int(rng.integers(*context_words)))]
        first = int(rng.integers(0, len(words) - 3))
        length = int(rng.integers(1, 4))
        context = " ".join(words)
        start = len(" ".join(words[:first])) + (1 if first else 0)
        answer = " ".join(words[first : first + length])
        assert context[start : start + len(answer)] == answer
        question = " ".join(rng.choice(WORDS, int(rng.integers(2, 6)))) + "?"
        qas = [
            {"id": f"q{seed}-{i}", "question": question, "answers": [{"text": answer, "answer_start": start}]}
        ]
        paragraphs.append({"context": context, "qas": qas})
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}


def _write(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize(
    "mutate, words",
    [
        (
            lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start=1),
            ["q0-0", "not at"],
        ),
        (lambda d: d["data"][0]["paragraphs"][1]["qas"][0].update(id="q0-0"), ["q0-0", "twice"]),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].pop("question"), ["q0-0", "question"]),
        (lambda d: d.pop("data"), ["not a SQuAD file"]),
    ],
    ids=["misaligned-answer", "duplicate-id", "no-question", "no-data"],
)
def test_bad_squad_files_fail_naming_file_and_question(tmp_path, mutate, words):
    data = _squad_json(0, 3)
    mutate(data)
    path = _write(tmp_path / "bad.json", data)
    with pytest.raises(UserError) as info:
        squad_data.read_squad(path)
    assert str(info.value).startswith(path) and all(w in str(info.value) for w in words), str(info.value)
    with pytest.raises(UserError, match=r"bad2.json:2: invalid JSON"):
        squad_data.read_squad(_write(tmp_path / "bad2.json", '{"data":\n [}'))


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return tokenize.load_tokenizer(tiny_tokenizer_dir)


def test_windows_overlap_and_point_at_the_answer_where_it_is_inside(tokenizer):
    words = "the cat sat on the mat and the dog sat on the cat".split()  # one token each
    context = " ".join(words)
    start = context.index("dog sat")
    example = squad_data.QAExample("1", "a cat?", context, (("dog sat", start),), "x")
    features = squad.make_windows([example], tokenizer, 12, doc_stride=3, max_query_length=8)
    # [CLS] a cat ? [SEP] leaves 6 context tokens and [SEP]; windows start 6 - 3 = 3 words apart.
    offsets = features["offsets"]
    assert len(features["length"]) == 4 and (features["example_index"] == 0).all()
    for w in range(4):
        assert (offsets[w, :5] == -1).all() and context[offsets[w, 5, 0] :].startswith(
            " ".join(words[3 * w :])
        )
    targets = features["targets"].tolist()
    inside = [w for w, (s, e) in enumerate(targets) if (s, e) != (0, 0)]
    assert inside == [2]  # words 6-11; window 1 (3-8) holds "dog" but not "sat", window 3 starts at 9
    s, e = targets[2]
    assert context[offsets[2, s, 0] : offsets[2, e, 1]] == "dog sat"
    # Decoding "perfect" logits from every window recovers the answer's text and character start.
    start_logits, end_logits = np.full((4, 12), -5.0), np.full((4, 12), -5.0)
    start_logits[2, s], end_logits[2, e] = 5.0, 5.0
    assert squad.best_spans(start_logits, end_logits, features, [example])[0] == ("dog sat", start, 10.0)


def test_best_span_is_chosen_across_windows_within_the_length_limit():
    context = "a b c d e f g h"
    offsets = np.full((2, 6, 2), -1)
    for w, first in enumerate((0, 3)):  # window 0: words 0-4, window 1: words 3-7 (tokens 1-5 of each)
        for t in range(5):
            offsets[w, t + 1] = (2 * (first + t), 2 * (first + t) + 1)
    features = {"offsets": offsets, "example_index": np.array([0, 0])}
    example = squad_data.QAExample("1", "q", context, (), "x")
    start, end = np.zeros((2, 6)), np.zeros((2, 6))
    start[0, 1], end[0, 2] = 1.0, 1.0  # "a b": score 2
    start[1, 2], end[1, 5] = 1.5, 1.5  # "e f g h": score 3, 4 tokens
    start[1, 0] = end[1, 0] = 9.0  # [CLS] is not context: never an answer
    assert squad.best_spans(start, end, features, [example])[0] == ("e f g h", 8, 3.0)
    assert squad.best_spans(start, end, features, [example], max_answer_length=3)[0][0] == "a b"
    end[1, 1] = 4.0  # before the start at "e" it is no span with it; "d" alone scores 0 + 4 = 4 > 3
    assert squad.best_spans(start, end, features, [example])[0] == ("d", 6, 4.0)


# ---- the whole job -------------------------------------------------------------------------------------


def _config(tmp_path):
    config = squad_config.get_config("tiny")
    config.data.train_path = _write(tmp_path / "train.json", _squad_json(0, 24))
    config.data.eval_path = _write(tmp_path / "dev.json", _squad_json(1, 9))
    config.training.num_train_steps = 4
    config.training.eval_every = 4
    config.training.checkpoint_every = 4
    return config


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("qa")
    config = _config(tmp_path)
    final = train.train_and_evaluate(config, str(tmp_path / "run"))
    return tmp_path / "run", config, final


def test_end_to_end_answers_every_question_once(qa_run):
    workdir, _, final = qa_run
    saved = json.loads((workdir / "eval/final_eval.json").read_text())
    assert (
        set(saved["report"]) == {"exact_match", "f1", "num_questions"}
        and saved["report"]["num_questions"] == 9
    )
    assert sorted(saved["predictions"]) == sorted(f"q1-{i}" for i in range(9))
    assert (
        set(final["eval"]) == {"exact_match", "f1", "loss", "num_examples"}
        and final["eval"]["num_examples"] == 9
    )
    gold = squad_data.read_squad(str(workdir.parent / "dev.json"))
    assert squad.squad_scores(saved["predictions"], gold)["f1"] == final["eval"]["f1"]
    check_final_examples(str(workdir), final["eval"], "qa", 9)


def test_windows_on_different_devices_and_batches_give_the_same_answers(tmp_path):
    """Each question's windows are combined exactly once, however they were spread over devices/batches.
    The run's model at its initial parameters (no training: what is compared is the combination)."""
    config = _config(tmp_path)
    setup = train.prepare(config, str(tmp_path / "unused"))  # reads and checks; writes nothing
    task = setup.task
    splits = setup.splits
    pipeline.tokenize_splits(splits, setup.tokenizer, config.data, None, task, setup.label_names)
    split = splits["eval"]
    assert len(split.features["length"]) > 2 * len(split.examples)  # several windows per question
    model = train.create_model(config, setup.bert_config, 2)
    initial = trained.initial_params(config, None, model)
    answers = []
    for num_devices, batch_size in ((1, 4), (3, 6), (8, 8), (8, 64)):
        devices = jax.devices()[:num_devices]
        p_eval = parallel.pmap_eval_step(steps.eval_step, devices=devices, model=model, task=task)
        params = parallel.replicate(initial, devices)
        totals = train.eval_counts(p_eval, params, split, [16, 32], batch_size, num_devices)
        answers.append(task.report(totals, split, setup.label_names, config.data).extra["predictions"])
    assert answers[0] == answers[1] == answers[2] == answers[3] and len(answers[0]) == 9


def test_predict_and_export_to_bert_for_question_answering(qa_run, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxft import export

    workdir, _, _ = qa_run
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"question": "who got the film?", "context": "you got the film after two weeks"})
    )
    out = tmp_path / "out.jsonl"
    assert predict.main(["--workdir", str(workdir), "--input", str(source), "--output", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["answer"] and "you got the film after two weeks"[row["start"] :].startswith(row["answer"])
    hf = export.export(str(workdir), str(tmp_path / "hf"))
    model = transformers.BertForQuestionAnswering.from_pretrained(hf).eval()
    run = predict.load_run(str(workdir))
    ours = train.create_model(run.config, run.bert_config, 2)
    ids = np.array([[2, 40, 41, 3, 42, 43, 44, 3]], np.int32)
    types = np.array([[0, 0, 0, 0, 1, 1, 1, 1]], np.int32)
    expected = np.asarray(ours.apply({"params": run.params}, ids, np.ones_like(ids), types))
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(ids).long(), token_type_ids=torch.tensor(types).long())
    np.testing.assert_allclose(expected[..., 0], theirs.start_logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(expected[..., 1], theirs.end_logits.numpy(), atol=1e-4, rtol=0)


def test_a_stride_that_leaves_no_room_is_a_user_error(tmp_path):
    config = _config(tmp_path)
    config.task.doc_stride = 20  # 32 - 12 - 3 = 17 context tokens per window at least
    with pytest.raises(UserError, match=r"task.doc_stride=20 must be in \[0, 17\)"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


DATA = os.environ.get("JAXFT_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.mark.realdata
@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "squad_v1.1")), reason=f"no squad_v1.1 under {DATA}")
def test_squad_dev_reads_to_its_published_counts_and_gold_scores_full_marks():
    examples = squad_data.read_squad(os.path.join(DATA, "squad_v1.1", "dev-v1.1.json"))
    assert len(examples) == 10570 and sum(len(e.answers) for e in examples) == 34726
    gold = {e.id: e.answers[0][0] for e in examples}
    assert squad.squad_scores(gold, examples) == {"exact_match": 100.0, "f1": 100.0, "num_questions": 10570}
