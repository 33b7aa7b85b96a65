"""Bad days of the machine, not of the input: a full or read-only disk, two runs on one workdir, a workdir
path that is empty or names someone else's directory, text that is not Unicode.

Each ends with one line (a `UserError`; through a command line, `error: ...` and exit status 2), and leaves
the workdir as it was: a directory that the failed start created is removed, other files keep their bytes.
Full and read-only disks are simulated (an `OSError` raised where the write happens), so the class is always
tested; where the test may mount a tmpfs (root), the same runs also meet a real one.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxft import export, predict
from jaxft.data import readers
from jaxft.errors import StorageError, UserError
from jaxft.training import checkpoint, writers
from jaxft.training import workdir as workdir_lib
from tests.test_bad_input import REPO, assert_unchanged, jsonl, snapshot, tiny_config, write

ENOSPC = "No space left on device (ENOSPC)"
EROFS = "Read-only file system (EROFS)"


def train(config, workdir):
    from jaxft.training.train import train_and_evaluate

    return train_and_evaluate(config, str(workdir))


def one_line(info) -> str:
    message = str(info.value)
    assert message and "\n" not in message, repr(message)
    return message


def run_cli(*args, cwd=REPO):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    command = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "jaxft/configs/tiny.py"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def last_error_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1, lines
    return lines[-1]


# ---- what a jaxft workdir is ---------------------------------------------------------------------------


def test_the_entries_of_a_finished_run_are_all_jaxft_entries(tiny_run):
    from jaxft import compare_runner
    from jaxft.training import trackers, trained
    from jaxft.training import train as train_lib

    workdir, _ = tiny_run
    assert workdir_lib.foreign_entries(str(workdir)) == []
    assert workdir_lib.LOCK_FILE in os.listdir(workdir)
    named = {
        train_lib.MODEL_CONFIG,
        train_lib.TOKENIZER_DIR,
        trained.BASE_FILE,
        writers.METRICS_FILE,
        writers.TENSORBOARD_DIR,
        compare_runner.CELL_LOG,
        compare_runner.CELL_RECORD,
        compare_runner.FINAL_METRICS,
        trackers.TRACKERS_FILE,
        trackers.MLRUNS_DIR,
        trackers.WANDB_DIR,
    }
    assert named <= workdir_lib.ENTRIES


@pytest.mark.parametrize(
    "entries",
    [
        [],
        ["cache/"],
        ["cache/", "config.json.k2j3h4.tmp", ".lock"],
        ["checkpoints/", "config.before-step-4.json"],
    ],
    ids=["empty", "cache-only", "interrupted-write", "resumed-with-changed-config"],
)
def test_directories_holding_only_jaxft_entries_are_accepted(tmp_path, entries):
    for entry in entries:
        (tmp_path / entry).mkdir() if entry.endswith("/") else (tmp_path / entry).write_text("x")
    workdir_lib.check(str(tmp_path))


def test_a_directory_a_cluster_job_made_for_its_log_is_accepted(tmp_path):
    (tmp_path / "slurm-4242.out").write_text("starting\n")  # sbatch --output=WORKDIR/slurm-%j.out
    workdir_lib.check(str(tmp_path))


def test_a_directory_with_another_programs_config_json_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"lr": 0.1}))
    with pytest.raises(UserError, match="its config.json is not a jaxft run's; give a new or empty"):
        workdir_lib.check(str(tmp_path))


def test_a_run_with_a_file_of_the_users_is_accepted(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run[0], copy)
    (copy / "notes.txt").write_text("lr 1e-3 looked best")
    workdir_lib.check(str(copy))


def test_a_hugging_face_checkpoint_directory_is_refused_byte_for_byte(tmp_path):
    hf = tmp_path / "bert-base"
    write(hf / "config.json", json.dumps({"model_type": "bert", "hidden_size": 32}))
    write(hf / "model.safetensors", b"\x00" * 64)
    write(hf / "tokenizer.json", "{}")
    write(hf / "vocab.txt", "[PAD]\n")
    before = snapshot(hf)
    with pytest.raises(UserError) as info:
        train(tiny_config(), hf)
    assert one_line(info) == (
        f"workdir {hf}: not a jaxft workdir: its config.json is not a jaxft run's and it holds "
        "model.safetensors, tokenizer.json, vocab.txt (a Hugging Face checkpoint goes in model.checkpoint); "
        "give a new or empty directory"
    )
    assert_unchanged(hf, before)


@pytest.mark.parametrize("path", ["", "  "], ids=["empty", "blank"])
def test_an_empty_workdir_path_writes_nothing_anywhere(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        train(tiny_config(), path)
    assert one_line(info) == f"workdir {path!r}: an empty path (an unset variable?); give a directory"
    assert os.listdir(tmp_path) == []


def test_cli_empty_workdir_writes_nothing_in_the_current_directory(tmp_path):
    line = last_error_line(run_cli("--workdir", "", cwd=tmp_path))
    assert line == "error: workdir '': an empty path (an unset variable?); give a directory"
    assert os.listdir(tmp_path) == []


def test_a_failed_start_removes_the_directories_it_created(tmp_path):
    workdir = tmp_path / "a" / "b" / "run"
    with pytest.raises(UserError):
        train(tiny_config(**{"training.best_metric": "acc"}), workdir)
    assert os.listdir(tmp_path) == []


# ---- the lock ------------------------------------------------------------------------------------------


def test_a_second_start_on_a_workdir_in_use_is_refused_in_process(tmp_path):
    workdir = tmp_path / "run"
    first = workdir_lib.Lock(str(workdir))
    first.acquire()
    try:
        write(workdir / "cache" / "tokens_x.npz", b"first's")
        before = snapshot(workdir)
        with pytest.raises(UserError) as info:
            train(tiny_config(), workdir)
        assert one_line(info) == (
            f"workdir {workdir}: in use by another run (pid {os.getpid()}); wait for it to end or give "
            "another workdir"
        )
        assert_unchanged(workdir, before)
    finally:
        first.release()


HOLD = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.read()
    """
)


def test_a_start_on_a_workdir_another_process_holds_names_its_pid_and_a_dead_holder_blocks_nothing(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workdir / ".lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        before = snapshot(workdir)
        with pytest.raises(UserError) as info:
            train(tiny_config(), workdir)
        assert f"in use by another run (pid {holder.pid})" in one_line(info)
        assert_unchanged(workdir, before)
    finally:
        holder.kill()
        holder.wait()
    lock = workdir_lib.Lock(str(workdir))  # the holder died without unlocking: the kernel let go
    lock.acquire()
    lock.release()


# ---- full and read-only disks (simulated) --------------------------------------------------------------


def test_a_token_cache_write_on_a_full_disk_removes_the_new_workdir(tmp_path, monkeypatch):
    from jaxft.data import tokenize

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tokenize.np, "savez", full)
    workdir = tmp_path / "run"
    with pytest.raises(StorageError) as info:
        train(tiny_config(), workdir)
    message = one_line(info)
    assert message.startswith(f"{workdir}/cache/tokens_") and message.endswith(
        f": writing the token cache: {ENOSPC}"
    ), message
    assert not workdir.exists()


def test_a_failed_checkpoint_save_stops_the_run_with_one_line(tmp_path, monkeypatch):
    """A synchronous failure; an async one is raised by Orbax at the next save or wait (next test)."""
    original = ocp.CheckpointManager.save

    def full_at_step_4(self, step, *args, **kwargs):
        if step == 4:
            raise ValueError(
                'RESOURCE_EXHAUSTED: Error writing "key/0" in OCDBT database: Failed to write 68485 bytes to '
                "file 8: No space left on device [os_error_code='28']"
            )
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_step_4)
    workdir = tmp_path / "run"
    with pytest.raises(StorageError) as info:
        train(tiny_config(**{"training.num_train_steps": 12, "training.checkpoint_every": 4}), workdir)
    assert one_line(info) == f"{workdir}/checkpoints/latest: saving a checkpoint: {ENOSPC}"
    steps = [record["step"] for record in writers.read_metrics(str(workdir / "metrics.jsonl"))]
    assert max(steps) == 4, steps  # it did not train on past the failed save


def test_an_async_save_error_surfaces_in_wait_as_one_line_and_other_errors_keep_their_type(
    tmp_path, monkeypatch
):
    ckpts = checkpoint.Checkpoints(str(tmp_path), async_save=False)
    try:

        def read_only(self):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", read_only)
        with pytest.raises(StorageError) as info:
            ckpts.wait()
        assert one_line(info) == f"{tmp_path}/checkpoints/latest: saving a checkpoint: {EROFS}"

        def bug(self):
            raise ValueError("a pytree that does not match")

        monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", bug)
        with pytest.raises(ValueError, match="a pytree that does not match"):
            ckpts.wait()
    finally:
        monkeypatch.undo()
        ckpts.close()


def test_a_metrics_write_on_a_full_disk_names_the_file(tmp_path):
    writer = writers.MetricWriter(str(tmp_path), tensorboard=False)

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            pass

    writer.loggers[0]._file = Full()  # the JsonlLogger
    with pytest.raises(StorageError) as info:
        writer.write_scalars(1, {"loss": 0.5})
    assert one_line(info) == f"{tmp_path}/metrics.jsonl: writing metrics: {ENOSPC}"
    writer.close()


def test_a_failed_export_leaves_no_temporary_directory_and_a_stale_one_leaks_nothing(
    tiny_run, tmp_path, monkeypatch, capsys
):
    workdir, _ = tiny_run
    out = tmp_path / "hf"
    stale = tmp_path / "hf.tmp-export"
    write(stale / "stale.bin", b"from an export that crashed")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(export.json, "dump", full)
        assert export.main(["--workdir", str(workdir), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {out}: exporting: {ENOSPC}\n"
    # Its own temporary directory is gone; another export's (it may still be running) is left alone.
    assert os.listdir(tmp_path) == ["hf.tmp-export"]
    export.export(str(workdir), str(out))
    assert "stale.bin" not in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["hf", "hf.tmp-export"]


def test_predict_into_a_read_only_directory_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    def read_only(path, data):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(predict.files, "write_atomic", read_only)
    out = tmp_path / "p.jsonl"
    source = write(tmp_path / "in.jsonl", jsonl({"text": "a good film"}))
    argv = ["--workdir", str(tiny_run[0]), "--input", str(source), "--output", str(out)]
    assert predict.main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: --output {out}: {EROFS}"  # after tqdm's bar
    assert not out.exists()


# ---- a real tmpfs, where this process may mount one ----------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a tmpfs at tmp_path/mnt; yields a function (size, read_only) that (re)mounts it."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mounted = []

    def mount(size: str, read_only: bool = False):
        if mounted:
            subprocess.run(["umount", str(mount_point)], check=True)
            mounted.clear()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], capture_output=True, text=True
        )
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
        mounted.append(True)
        return mount_point

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_cli_disk_fills_during_training(tmpfs):
    """Room for the token cache and the run's files, not for the first checkpoint (step 4 of 12). Which
    writer meets the full disk first (the checkpoint, or the TensorBoard events written beside it) depends on
    a few hundred bytes; either must end the run with one line naming its file."""
    workdir = tmpfs("450k") / "run"
    line = last_error_line(run_cli("--workdir", str(workdir)))
    written = (f"{workdir}/checkpoints/", f"{workdir}/tensorboard", f"{workdir}/metrics.jsonl")
    assert line.startswith(tuple(f"error: {path}" for path in written)) and line.endswith(ENOSPC), line
    steps = [record["step"] for record in writers.read_metrics(str(workdir / "metrics.jsonl"))]
    assert max(steps) < 12, steps  # stopped at the next save after the failed one, not at the end


def test_cli_disk_full_at_the_token_cache_leaves_no_workdir(tmpfs):
    mount_point = tmpfs("60k")
    line = last_error_line(run_cli("--workdir", str(mount_point / "run")))
    assert ": writing the token cache: " in line and line.endswith(ENOSPC), line
    assert os.listdir(mount_point) == []


def test_cli_read_only_filesystem_new_run_and_resume(tmpfs, tiny_run):
    mount_point = tmpfs("1m", read_only=True)
    line = last_error_line(run_cli("--workdir", str(mount_point / "run")))
    assert line == f"error: {mount_point / 'run'}: {EROFS}"
    mount_point = tmpfs("4m")
    shutil.copytree(tiny_run[0], mount_point / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
    before = snapshot(mount_point / "run")
    line = last_error_line(
        run_cli("--workdir", str(mount_point / "run"), "--config.training.num_train_steps=14")
    )
    assert line == f"error: {mount_point / 'run' / '.lock'}: {EROFS}"
    assert_unchanged(mount_point / "run", before)


# ---- text that is not Unicode --------------------------------------------------------------------------

SURROGATE = '{"text": "a cat \\ud800 sat", "label": "positive"}\n'


@pytest.mark.parametrize("field", ["text", "text_pair", "label"])
def test_a_lone_surrogate_in_a_jsonl_field_names_file_line_and_field(tmp_path, field):
    record = {"text": "a cat sat", "text_pair": "a dog", "label": "positive"}
    line = json.dumps(record).replace(f'"{record[field]}"', '"a \\udc00"')
    path = write(
        tmp_path / "train.jsonl", jsonl({"text": "fine", "text_pair": "ok", "label": "negative"}) + line
    )
    with pytest.raises(UserError) as info:
        readers.read_examples(str(path), text_field="text", label_field="label", text_pair_field="text_pair")
    option = {"text": "data.text_field", "text_pair": "data.text_pair_field", "label": "data.label_field"}
    assert one_line(info) == (
        f"{path}:2: '{field}' ({option[field]}) holds U+DC00 at character 2, half of a UTF-16 surrogate "
        "pair: not valid Unicode text"
    )


def test_a_lone_surrogate_in_training_and_prediction_input(tiny_run, tmp_path, capsys):
    path = write(tmp_path / "train.jsonl", SURROGATE)
    expected = (
        f"{path}:1: 'text' (data.text_field) holds U+D800 at character 6, half of a UTF-16 surrogate pair: "
        "not valid Unicode text"
    )
    workdir = tmp_path / "run"
    with pytest.raises(UserError) as info:
        train(tiny_config(**{"data.train_path": str(path)}), workdir)
    assert one_line(info) == expected and not workdir.exists()
    out = tmp_path / "p.jsonl"
    assert predict.main(["--workdir", str(tiny_run[0]), "--input", str(path), "--output", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"


def test_a_lone_surrogate_in_squad_and_multilabel_files(tmp_path):
    from jaxft.data import squad
    from jaxft.tasks import multilabel

    context = "the cat sat \ud800"
    article = {"paragraphs": [{"context": context, "qas": [{"id": "q1", "question": "who?", "answers": []}]}]}
    path = write(tmp_path / "squad.json", json.dumps({"data": [article]}))
    with pytest.raises(UserError) as info:
        squad.read_squad(str(path), require_answers=False)
    assert one_line(info) == (
        f"{path}: article 0: the context holds U+D800 at character 12, half of a UTF-16 surrogate pair: not "
        "valid Unicode text"
    )
    with pytest.raises(UserError, match=r"x:1: a label \(data.label_field\) holds U\+DBFF"):
        multilabel._split_labels("x:1", ["ok", "b\udbff"], ",")
    np.testing.assert_equal(multilabel._split_labels("x:1", ["ok", "b"], ","), ("ok", "b"))
