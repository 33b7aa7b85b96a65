"""What is loaded back is validated as strictly as what is trained.

A tokenizer must be one the model's vocabulary was made for; prediction and export run training's checks on
the run's files (config.json, model_config.json, labels.json against the checkpoints' labels); a resumed run
is compared with the train data and tokenizer its checkpoints record; every config value is checked for
type, finiteness and range before anything is written; labels may not take a name the reports use; and a
command that finds nothing to do says so with exit status 2.
"""

import hashlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxft import config as config_lib
from jaxft import export, predict
from jaxft.data import tokenize
from jaxft.errors import UserError
from jaxft.models.bert import BertConfig
from jaxft.training import checkpoint, pipeline
from tests import test_bad_input
from tests.test_bad_input import (
    REPO,
    TRAIN,
    assert_unchanged,
    copy_of_previous_run,
    fails,
    snapshot,
    tiny_config,
    write,
)

# test_bad_input's fixtures: a new or previous-run workdir checked unchanged after the test, and that run.
previous_run = test_bad_input.previous_run
workdir = test_bad_input.workdir

TINY_TOKENIZER = REPO / "jaxft" / "configs" / "tiny_tokenizer"
DEV = REPO / "jaxft" / "configs" / "demo_sentiment" / "dev.jsonl"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def copy_of_tiny_run(tiny_run, tmp_path) -> Path:
    path = tmp_path / "run"
    shutil.copytree(tiny_run[0], path)
    return path


def predict_fails(capsys, workdir, *words, input_path=DEV, output=None) -> str:
    """Runs jaxft.predict, expects exit status 2 and one `error:` line holding every one of `words`."""
    fresh = output is None
    output = output or Path(workdir).parent / "predictions.jsonl"
    argv = ["--workdir", str(workdir), "--input", str(input_path), "--output", str(output)]
    assert predict.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert not fresh or not os.path.exists(output)
    return err.strip()


# ---- the tokenizer must belong to the model ----------------------------------------------------------------


def test_a_tokenizer_directory_without_a_vocabulary_file_is_refused_in_training(workdir, tmp_path):
    # transformers builds a 5-token tokenizer from tokenizer_config.json alone: every word became [UNK].
    lost = tmp_path / "lost_tokenizer"
    lost.mkdir()
    shutil.copy(TINY_TOKENIZER / "tokenizer_config.json", lost)
    message = fails(tiny_config(**{"model.tokenizer": str(lost)}), workdir)
    assert message == (
        f"{lost}: the tokenizer has no vocabulary file (none of tokenizer.json, vocab.txt, spiece.model, "
        "spm.model, sentencepiece.bpe.model, tokenizer.model, vocab.json + merges.txt)"
    )


@pytest.mark.parametrize(
    "present, ok",
    [
        (["tokenizer_config.json"], False),
        (["vocab.json"], False),  # byte-level BPE needs its merges too
        (["vocab.json", "merges.txt"], True),
        (["spiece.model"], True),
        (["sentencepiece.bpe.model"], True),
        (["vocab.txt"], True),
        (["tokenizer.json"], True),
    ],
)
def test_vocabulary_files_of_each_tokenizer_family(tmp_path, present, ok):
    for name in present:
        (tmp_path / name).write_text("")
    if ok:
        tokenize.check_vocabulary_files(str(tmp_path))
    else:
        with pytest.raises(UserError, match=f"^{tmp_path}: the tokenizer has no vocabulary file"):
            tokenize.check_vocabulary_files(str(tmp_path))


def test_a_tokenizer_far_smaller_than_the_models_vocabulary_is_refused_in_training(workdir, tmp_path):
    # The tiny tokenizer (555 tokens) with a checkpoint made for 30522: most rows no token reaches.
    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    config_json = {"model_type": "bert", "vocab_size": 30522, "max_position_embeddings": 64, **shape}
    ckpt = write(tmp_path / "checkpoint" / "config.json", json.dumps(config_json)).parent
    config = tiny_config(**{"model.checkpoint": str(ckpt)})
    message = fails(config, workdir)
    assert message == (
        f"model.tokenizer={TINY_TOKENIZER}: the tokenizer has 555 tokens but the model's vocab_size is "
        "30522: 29967 embedding rows no token reaches (more than padding to a multiple of 128); it is not "
        "this model's tokenizer"
    )


def test_the_size_rule_allows_padding_to_a_multiple_of_128_and_nothing_more():
    tokenizer = tokenize.load_tokenizer(str(TINY_TOKENIZER))  # 555 tokens
    tokenize.check_fits_model(tokenizer, 555, 0, "t")
    tokenize.check_fits_model(tokenizer, 640, 0, "t")  # padded to 5 x 128
    with pytest.raises(
        UserError, match="^t: the tokenizer has 555 tokens but the model's vocab_size is 641: "
    ):
        tokenize.check_fits_model(tokenizer, 641, 0, "t")
    with pytest.raises(
        UserError, match="^t: the tokenizer has 555 tokens but the model's vocab_size is 554$"
    ):
        tokenize.check_fits_model(tokenizer, 554, 0, "t")
    with pytest.raises(UserError) as info:
        tokenize.check_fits_model(tokenizer, 640, 600, "t")
    assert str(info.value) == "t: the model's pad_token_id=600 is not a token of the tokenizer (555 tokens)"


def test_a_tokenizer_of_special_tokens_only_is_refused(tmp_path):
    import transformers

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    transformers.BertTokenizerFast(vocab=str(vocab)).save_pretrained(str(tmp_path / "tok"))
    tokenizer = tokenize.load_tokenizer(str(tmp_path / "tok"))
    with pytest.raises(UserError) as info:
        tokenize.check_fits_model(tokenizer, 5, 0, "model.tokenizer=X")
    assert (
        str(info.value)
        == "model.tokenizer=X: the tokenizer holds only its 5 special token(s); its vocabulary is missing"
    )


@pytest.mark.parametrize("lost", [["tokenizer.json"], ["tokenizer.json", "tokenizer_config.json"]])
def test_predict_and_export_refuse_a_workdir_tokenizer_that_lost_its_vocabulary(
    tiny_run, tmp_path, capsys, lost
):
    run = copy_of_tiny_run(tiny_run, tmp_path)
    for name in lost:
        (run / "tokenizer" / name).unlink()
    if len(lost) == 2:  # an empty directory: a tokenizer_config.json alone is the case of the issue
        shutil.copy(TINY_TOKENIZER / "tokenizer_config.json", run / "tokenizer")
    err = predict_fails(capsys, run)
    assert err.startswith(f"error: {run / 'tokenizer'}: the tokenizer has no vocabulary file")
    with pytest.raises(UserError, match="the tokenizer has no vocabulary file"):
        export.export(str(run), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_predict_refuses_a_workdir_tokenizer_of_another_size(tiny_run, tmp_path, capsys, tiny_tokenizer_dir):
    run = copy_of_tiny_run(tiny_run, tmp_path)
    shutil.rmtree(run / "tokenizer")
    shutil.copytree(tiny_tokenizer_dir, run / "tokenizer")  # 27 tokens for a 555-row table
    err = predict_fails(capsys, run)
    assert err == (
        f"error: {run / 'tokenizer'}: the tokenizer has 27 tokens but the model's vocab_size is 555: 528 "
        "embedding rows no token reaches (more than padding to a multiple of 128); it is not this model's "
        "tokenizer"
    )


# ---- predict and export check the run's files as training did -------------------------------------------


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        section = data
        for part in parents:
            section = section[part]
        section[leaf] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "name, change, expected",
    [
        (
            "config.json",
            {"data.max_seq_length": 128},
            "config.json: data.max_seq_length=128 exceeds the model's max_position_embeddings=64 (of ",
        ),
        (
            "config.json",
            {"optimizer.learning_rate": float("nan")},
            "optimizer.learning_rate=nan must be a finite",
        ),
        ("config.json", {"data.num_buckets": 0}, "config.json: config data.num_buckets=0 must be positive"),
        ("config.json", {"data.max_seq_length": "32"}, "config data.max_seq_length='32' must be an integer"),
        ("config.json", {"task.name": "summarise"}, "config task.name='summarise' must be one of"),
        ("model_config.json", {"num_attention_heads": 0}, "num_attention_heads=0 must be a positive integer"),
        (
            "model_config.json",
            {"hidden_size": 30},
            "hidden_size 30 is not a multiple of num_attention_heads 4",
        ),
        (
            "model_config.json",
            {"hidden_dropout_prob": 1.5},
            "hidden_dropout_prob=1.5 must be a number in [0, 1)",
        ),
    ],
    ids=["positions", "nan", "zero", "string", "task", "heads", "heads-divide", "dropout"],
)
def test_predict_and_export_run_trainings_checks_on_edited_files(
    tiny_run, tmp_path, capsys, name, change, expected
):
    run = copy_of_tiny_run(tiny_run, tmp_path)
    _edit_json(run / name, **change)
    err = predict_fails(capsys, run, expected)
    assert err.startswith(f"error: {run / name}: "), err
    with pytest.raises(UserError, match=f"^{run / name}: "):
        export.export(str(run), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("name", ["config.json", "model_config.json", "labels.json"])
def test_a_truncated_run_file_is_one_line_naming_it(tiny_run, tmp_path, capsys, name):
    run = copy_of_tiny_run(tiny_run, tmp_path)
    text = (run / name).read_text()
    (run / name).write_text(text[: len(text) // 2])
    err = predict_fails(capsys, run, str(run / name))
    assert "Traceback" not in err
    with pytest.raises(UserError, match=str(run / name)):
        export.export(str(run), str(tmp_path / "hf"))


def test_predict_and_export_refuse_labels_that_differ_from_the_checkpoints(tiny_run, tmp_path, capsys):
    run = copy_of_tiny_run(tiny_run, tmp_path)
    (run / "labels.json").write_text(json.dumps({"labels": ["positive", "negative"]}))  # every output flipped
    err = predict_fails(capsys, run)
    assert err == (
        f"error: {run / 'labels.json'}: the label set ['positive', 'negative'] differs from "
        "['negative', 'positive'], which checkpoint latest step 12 was trained with"
    )
    with pytest.raises(UserError, match="which checkpoint latest step 12 was trained with"):
        export.export(str(run), str(tmp_path / "hf"))


def test_saved_labels_reads_every_checkpoints_meta(tiny_run):
    assert checkpoint.saved_labels(str(tiny_run[0])) == {
        "checkpoint latest step 12": ["negative", "positive"],
        "checkpoint latest step 8": ["negative", "positive"],
    }


def test_resuming_with_labels_that_differ_from_the_checkpoints_is_refused(previous_run, tmp_path):
    path = copy_of_previous_run(previous_run, tmp_path)
    (path / "labels.json").write_text(json.dumps({"labels": ["positive", "negative"]}))
    before = snapshot(path)
    message = fails(tiny_config(**{"training.num_train_steps": 4}), path)
    assert message == (
        f"{path / 'labels.json'}: the label set ['positive', 'negative'] differs from "
        "['negative', 'positive'], which checkpoint latest step 2 in this workdir was trained with "
        "(restore labels.json, or use another workdir)"
    )
    assert_unchanged(path, before)


def test_model_config_values_are_checked():
    for field, value in [("vocab_size", 0), ("num_hidden_layers", -1), ("intermediate_size", 3.5)]:
        with pytest.raises(UserError, match=f"^{field}={value!r} must be a positive integer$"):
            BertConfig.from_dict({field: value})
    with pytest.raises(UserError, match="^layer_norm_eps=nan must be a positive finite number$"):
        BertConfig.from_dict({"layer_norm_eps": float("nan")})
    with pytest.raises(UserError, match="^pad_token_id=99 must be a token id below vocab_size=99$"):
        BertConfig.from_dict({"vocab_size": 99, "pad_token_id": 99})


# ---- fingerprints: token cache and resume ----------------------------------------------------------------


def _cased_copy(tmp_path) -> Path:
    """The tiny tokenizer with the same vocabulary and size but without lower-casing."""
    cased = tmp_path / "cased_tokenizer"
    shutil.copytree(TINY_TOKENIZER, cased)
    _edit_json(cased / "tokenizer_config.json", do_lower_case=False)
    return cased


def test_a_changed_tokenizer_does_not_reuse_cached_tokens(tmp_path):
    from jaxft.data.readers import Example

    examples = [Example("The Movie was GOOD", None, None, "x:1")]
    lower = tokenize.load_tokenizer(str(TINY_TOKENIZER))
    cased = tokenize.load_tokenizer(str(_cased_copy(tmp_path)))
    assert len(lower) == len(cased) and lower.vocab_size == cased.vocab_size
    cache = str(tmp_path / "cache")
    first = tokenize.cached_tokenize(examples, lower, 8, cache, {"path": "p"})
    second = tokenize.cached_tokenize(examples, cased, 8, cache, {"path": "p"})
    expected, _ = tokenize.tokenize(examples, cased, 8)
    np.testing.assert_array_equal(second["input_ids"], expected["input_ids"])
    assert not np.array_equal(first["input_ids"], second["input_ids"])  # "The" is [UNK] when cased
    assert len(os.listdir(cache)) == 2


def test_the_tokenizer_fingerprint_ignores_the_truncation_a_call_leaves():
    tokenizer = tokenize.load_tokenizer(str(TINY_TOKENIZER))
    before = tokenize.fingerprint(tokenizer)
    tokenizer(["a b c d e f"], truncation=True, max_length=4)
    assert tokenize.fingerprint(tokenizer) == before


def test_checkpoints_record_the_data_fingerprint(previous_run):
    [(kind, step, meta)] = [m for m in checkpoint.saved_metas(str(previous_run[0])) if m[0] == "latest"]
    assert (kind, step) == ("latest", 2)
    train = pipeline.fingerprint(pipeline.read_splits(tiny_config().data, None)[1]["train"].examples)
    assert meta["data_fingerprint"]["train"] == train and train["examples"] == 404
    assert meta["data_fingerprint"]["tokenizer"] == tokenize.fingerprint(
        tokenize.load_tokenizer(str(TINY_TOKENIZER))
    )


def test_the_data_fingerprint_ignores_where_examples_come_from(tmp_path):
    moved = write(tmp_path / "elsewhere.jsonl", TRAIN.read_text())
    data = tiny_config(**{"data.train_path": str(moved)}).data
    here = pipeline.read_splits(tiny_config().data, None)[1]["train"].examples
    there = pipeline.read_splits(data, None)[1]["train"].examples
    assert pipeline.fingerprint(here) == pipeline.fingerprint(there)
    assert pipeline.fingerprint(here[:-1])["sha256"] != pipeline.fingerprint(here)["sha256"]


def test_resuming_on_changed_train_data_says_so(previous_run, tmp_path, caplog):
    path = copy_of_previous_run(previous_run, tmp_path)
    negatives = [line for line in TRAIN.read_text().splitlines() if '"negative"' in line]
    positives = [line for line in TRAIN.read_text().splitlines() if '"positive"' in line]
    changed = write(tmp_path / "train.jsonl", "\n".join(negatives[:199] + positives[:1]) + "\n")
    config = tiny_config(**{"data.train_path": str(changed), "training.num_train_steps": 3})
    with caplog.at_level(logging.WARNING):
        from jaxft.training.train import train_and_evaluate

        train_and_evaluate(config, str(path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "The train data changed since step 2 (404 -> 200 examples); resuming on the new data" in warnings


def test_resuming_with_another_tokenizer_is_refused(previous_run, tmp_path):
    path = copy_of_previous_run(previous_run, tmp_path)
    cased = _cased_copy(tmp_path)
    message = fails(tiny_config(**{"model.tokenizer": str(cased), "training.num_train_steps": 4}), path)
    assert message == (
        f"model.tokenizer={cased}: the tokenizer differs from the one the run being resumed in this "
        "workdir was trained with until step 2; its embeddings belong to the old token ids (restore that "
        "tokenizer, or use another workdir)"
    )
    assert_unchanged(path, previous_run[1])


# ---- predict --input F --output F --------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["same", "symlink", "relative"])
def test_predict_refuses_to_write_over_its_input(tmp_path, capsys, monkeypatch, alias):
    source = write(tmp_path / "in.jsonl", DEV.read_text())
    digest = sha256(source)
    output = source
    if alias == "symlink":
        output = tmp_path / "link.jsonl"
        output.symlink_to(source)
    elif alias == "relative":
        monkeypatch.chdir(tmp_path / "..")
        output = Path(tmp_path.name) / ".." / tmp_path.name / "in.jsonl"
    # tmp_path is no workdir: the check comes before the run is read
    err = predict_fails(capsys, tmp_path, input_path=source, output=output)
    assert err == f"error: --output {output}: is the --input file; the predictions would replace it"
    assert sha256(source) == digest


def test_predict_on_an_input_without_examples_says_so(tiny_run, tmp_path, capsys):
    empty = write(tmp_path / "empty.jsonl", "")
    err = predict_fails(capsys, tiny_run[0], input_path=empty)
    assert err.startswith(f"error: {empty}") and "no examples" in err


def test_predict_and_export_of_a_workdir_without_a_checkpoint(tiny_run, tmp_path, capsys):
    run = copy_of_tiny_run(tiny_run, tmp_path)
    shutil.rmtree(run / "checkpoints")
    err = predict_fails(capsys, run)
    assert err == f"error: --workdir={run}: no finished jaxft checkpoint in {run / 'checkpoints'}"
    assert export.main(["--workdir", str(run), "--out", str(tmp_path / "hf")]) == 2
    assert (
        capsys.readouterr().err
        == f"error: --workdir={run}: no finished jaxft checkpoint in {run / 'checkpoints'}\n"
    )


# ---- odd values, reserved names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("training.num_train_steps", 2.5, "must be an integer"),
        ("training.eval_every", -1, "must not be negative"),
        ("training.log_every", 0, "must be positive"),
        ("training.checkpoint_every", float("inf"), "must be an integer"),
        ("training.keep_checkpoints", True, "must be an integer"),
        ("training.num_epochs", 1.5, "must be an integer"),
        ("optimizer.learning_rate", float("nan"), "must be a finite number"),
        ("optimizer.learning_rate", float("inf"), "must be a finite number"),
        ("optimizer.learning_rate", -1e-5, "must not be negative"),
        ("optimizer.warmup_steps", -2, "must not be negative"),
        ("optimizer.warmup_ratio", 1.0, "must be in [0, 1)"),
        ("optimizer.weight_decay", float("nan"), "must be a finite number"),
        ("optimizer.max_grad_norm", float("inf"), "must be a finite number"),
        ("optimizer.eps", 0.0, "must be positive"),
        ("data.max_seq_length", 0, "must be positive"),
        ("data.num_buckets", -1, "must be positive"),
        ("data.k_shot", -1, "must not be negative"),
        ("training.batch_size", 0, "must be positive"),
        ("training.eval_batch_size", -8, "must be positive"),
        ("training.early_stopping_min_delta", float("nan"), "must be a finite number"),
        ("model.hidden_dropout", 1.0, "must be in [0, 1)"),
        ("model.classifier_dropout", float("nan"), "must be a finite number"),
        ("model.random_init.attention_probs_dropout_prob", -0.1, "must be in [0, 1)"),
        ("model.random_init.num_attention_heads", 0, "must be positive"),
        ("seed", -1, "must not be negative"),
        ("seed", 1.5, "must be an integer"),
    ],
)
def test_odd_values_name_the_key(key, value, words):
    config = tiny_config()
    *parents, leaf = key.split(".")
    section = config
    for part in parents:
        section = section[part]
    with section.ignore_type():  # what a config file or a hand-edited config.json can hold
        section[leaf] = value
    with pytest.raises(UserError) as info:
        config_lib.check(config)
    shown = value if isinstance(value, int | float) and not isinstance(value, bool) else repr(value)
    if words == "must be an integer":
        shown = repr(value)
    assert str(info.value) == f"config {key}={shown} {words}"


@pytest.mark.parametrize(
    "key, value, words",
    [
        (
            "regularization.rdrop_alpha",
            float("nan"),
            "config regularization.rdrop_alpha=nan must be a finite number",
        ),
        ("adversarial.epsilon", float("inf"), "config adversarial.epsilon=inf must be a finite number"),
        ("peft.lora_alpha", 0.0, "config peft.lora_alpha=0.0 must be positive"),
        ("peft.lora_alpha", float("nan"), "config peft.lora_alpha=nan must be a finite number"),
        ("task.threshold", "0.5", "config task.threshold='0.5' must be a number"),
        ("task.n_best", 2.5, "config task.n_best=2.5 must be an integer"),
    ],
)
def test_odd_strategy_and_task_values_name_the_key(workdir, key, value, words):
    config = tiny_config()
    section, leaf = key.split(".")
    with config[section].ignore_type():
        config[section][leaf] = value
    assert fails(config, workdir) == words


@pytest.mark.parametrize("label", ["accuracy", "macro avg", "weighted avg", "micro avg", "samples avg"])
def test_a_label_named_like_a_report_entry_is_refused(workdir, tmp_path, label):
    lines = TRAIN.read_text().replace('"negative"', json.dumps(label))
    train = write(tmp_path / "train.jsonl", lines)
    config = tiny_config(**{"data.train_path": str(train), "data.eval_path": None})
    message = fails(config, workdir)
    if workdir.name == "new_workdir":
        assert (
            message
            == f"{train}: label {label!r} clashes with the evaluation report's own {label!r} entry; rename it"
        )


def test_a_report_name_among_ner_entity_types_is_refused():
    from jaxft.data import labels as labels_lib

    labels_lib.check_report_names(["O", "B-accuracy", "I-accuracy"], "f", tags=True)  # seqeval has none
    with pytest.raises(UserError) as info:
        labels_lib.check_report_names(["O", "B-micro avg", "I-micro avg"], "config data.labels", tags=True)
    assert str(info.value) == (
        "config data.labels: label 'B-micro avg' clashes with the evaluation report's own 'micro avg' entry; "
        "rename it"
    )


# ---- class 5: stale export files, torch's advice, --config that is not a config ------------------------


def test_export_never_picks_up_what_a_crashed_export_left(tiny_run, tmp_path):
    out = tmp_path / "hf"
    stale = tmp_path / "hf.tmp-export"
    stale.mkdir()
    (stale / "pytorch_model.bin").write_text("from a crashed export of another run")
    export.export(str(tiny_run[0]), str(out))
    assert sorted(os.listdir(out)) == [
        "README.md",  # the model card
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert sorted(os.listdir(tmp_path)) == ["hf", "hf.tmp-export"]  # the stale one is not ours to delete


class _System:
    def __reduce__(self):
        return (os.system, ("echo pickled code ran",))


def test_torchs_advice_to_load_unsafely_does_not_reach_the_user(tmp_path):
    torch = pytest.importorskip("torch")
    from jaxft.models import convert

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"w": _System()}, str(ckpt / "pytorch_model.bin"))
    with pytest.raises(UserError) as info:
        convert.load_state_dict(str(ckpt))
    assert str(info.value) == (
        f"{ckpt / 'pytorch_model.bin'}: refused to load (not a plain tensor file): refused global "
        "posix.system (only tensors and plain containers are read)"
    )
    with open(ckpt / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": 1}, f)  # a plain pickle, not torch's zip format
    with pytest.raises(UserError, match=r"not a PyTorch weights file \(pickle opcode \d+ is not allowed\)$"):
        convert.load_state_dict(str(ckpt))


def _train_cli(tmp_path, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = [sys.executable, "train.py", *args, "--workdir", str(tmp_path / "run")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("kind", ["json", "directory", "no-get-config"])
def test_a_config_path_that_is_not_a_config_says_so(tmp_path, kind):
    if kind == "json":
        path = write(tmp_path / "config.json", '{"training": {"batch_size": 8}}')
        expected = (
            f"error: --config {path}: not a Python config file (a .py file defining get_config(), "
            "e.g. jaxft/configs/sst2.py)"
        )
    elif kind == "directory":
        path = tmp_path / "configs"
        path.mkdir()
        expected = f"error: --config {path}: is a directory, not a config file (e.g. jaxft/configs/sst2.py)"
    else:
        path = write(tmp_path / "settings.py", "batch_size = 8\n")
        expected = f"error: --config {path}: not a config file: it defines no get_config()"
    assert _train_cli(tmp_path, "--config", str(path)) == expected


def test_compare_aggregate_only_with_nothing_finished_says_so(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    workdir = tmp_path / "cmp"
    command = [
        sys.executable, "-m", "jaxft.compare", "--config", "jaxft/configs/tiny.py", "--workdir", str(workdir),
        "--aggregate_only",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --aggregate_only: no cell of this comparison has run in {workdir}; nothing to do"
    )
    assert not workdir.exists()
