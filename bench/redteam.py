"""Red-team replay: bad days against the command lines, one PASS / FAIL / SKIP line per case.

    python bench/redteam.py            # every case
    python bench/redteam.py lock surr  # the cases whose name contains one of the words

Each `Case` prepares a fresh temporary directory (`setup`), runs its command there, and passes when the exit
status is the expected one, stderr has no traceback and ends in exactly one `error:` line that holds the
expected text (or, for a case that must succeed, holds no `error:` line at all), and its invariant holds
(e.g. "the workdir's files are byte-identical", "the resumed run ends where an uninterrupted one did").
Add a case with `CASES.append(Case(...))`. Cases that need a tmpfs mount (a full or read-only disk) are
SKIPped where this process may not mount one (mounting needs root). Exit status: 1 if any case failed.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TRAIN = [PY, str(REPO / "train.py"), "--config", str(REPO / "jaxft/configs/tiny.py")]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")


class Skip(Exception):
    """The case cannot run here (e.g. no permission to mount a tmpfs)."""


@dataclasses.dataclass
class Case:
    """One replayed case.

    Attributes:
      name: short and unique.
      setup: (tmp: Path) -> context dict; its "command" (argv) is run with cwd=context.get("cwd", tmp).
        "cleanup" (a callable) runs afterwards.
      status: the expected exit status.
      stderr: text the last stderr line must hold; None: the command must succeed (no `error:` line).
      invariant: (tmp, context) -> None; raises AssertionError when violated. Default: the snapshot of
        context["watch"] (if any) taken before the command equals the one after.
    """

    name: str
    setup: Callable[[Path], dict]
    status: int
    stderr: str | None
    invariant: Callable[[Path, dict], None] | None = None


def snapshot(root: Path) -> dict | None:
    """{relative path: sha256} of every file under `root` (directories as None); None if it is absent."""
    if not os.path.lexists(root):
        return None
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            result[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                result[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return result


def mount_tmpfs(path: Path, size: str, read_only: bool = False) -> Callable[[], None]:
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode:
        raise Skip(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
    return lambda: subprocess.run(["umount", "-l", str(path)], check=False)


_TRAINED: list[Path] = []


def trained_run() -> Path:
    """A finished tiny run, trained once per replay (prediction and export cases read it)."""
    if not _TRAINED:
        workdir = Path(tempfile.mkdtemp(prefix="redteam-run-")) / "run"
        subprocess.run([*TRAIN, "--workdir", str(workdir)], env=ENV, check=True, capture_output=True)
        _TRAINED.append(workdir)
    return _TRAINED[0]


# ---- the cases -----------------------------------------------------------------------------------------


def _empty_workdir(tmp):
    return {"command": [*TRAIN, "--workdir", ""], "watch": tmp}


def _hf_dir(tmp):
    hf = tmp / "bert-base"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (hf / "model.safetensors").write_bytes(b"\0" * 64)
    (hf / "vocab.txt").write_text("[PAD]\n")
    return {"command": [*TRAIN, "--workdir", str(hf)], "watch": hf}


HOLD = "import fcntl,os,sys; fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT); fcntl.flock(fd,fcntl.LOCK_EX); "
HOLD += "print('held',flush=True); sys.stdin.read()"


def _in_use(tmp):
    workdir = tmp / "run"
    workdir.mkdir()
    holder = subprocess.Popen(
        [PY, "-c", HOLD, str(workdir / ".lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    holder.stdout.readline()

    def cleanup():
        holder.kill()
        holder.wait()

    return {"command": [*TRAIN, "--workdir", str(workdir)], "watch": workdir, "cleanup": cleanup}


def _disk(size, read_only=False, name="run"):
    def setup(tmp):
        unmount = mount_tmpfs(tmp / "mnt", size, read_only)
        return {
            "command": [*TRAIN, "--workdir", str(tmp / "mnt" / name)],
            "cleanup": unmount,
            "mnt": tmp / "mnt",
        }

    return setup


def _stopped_early(tmp, context):
    metrics = context["mnt"] / "run" / "metrics.jsonl"
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
    assert max(steps) < 12, f"trained on to step {max(steps)} after the failed save"


def _nothing_left(tmp, context):
    assert os.listdir(context["mnt"]) == [], os.listdir(context["mnt"])


SURROGATE = '{"text": "a cat \\ud800 sat", "label": "positive"}\n'


def _surrogate_train(tmp):
    (tmp / "train.jsonl").write_text(SURROGATE)
    command = [*TRAIN, "--workdir", str(tmp / "run"), f"--config.data.train_path={tmp / 'train.jsonl'}"]
    return {"command": command, "watch": tmp / "run"}


def _surrogate_predict(tmp):
    (tmp / "in.jsonl").write_text(SURROGATE)
    run = trained_run()
    command = [PY, "-m", "jaxft.predict", "--workdir", str(run), "--input", str(tmp / "in.jsonl")]
    return {"command": [*command, "--output", str(tmp / "p.jsonl")], "watch": run, "cwd": REPO}


def _predict_read_only(tmp):
    (tmp / "in.jsonl").write_text('{"text": "a good film"}\n')
    unmount = mount_tmpfs(tmp / "mnt", "1m", read_only=True)
    run = trained_run()
    command = [PY, "-m", "jaxft.predict", "--workdir", str(run), "--input", str(tmp / "in.jsonl")]
    command += ["--output", str(tmp / "mnt" / "p.jsonl")]
    return {"command": command, "watch": run, "cleanup": unmount, "mnt": tmp / "mnt", "cwd": REPO}


def _export_disk_full(tmp):
    unmount = mount_tmpfs(tmp / "mnt", "16k")
    run = trained_run()
    command = [PY, "-m", "jaxft.export", "--workdir", str(run), "--out", str(tmp / "mnt" / "hf")]
    return {"command": command, "watch": run, "cleanup": unmount, "mnt": tmp / "mnt", "cwd": REPO}


# ---- checkpoints that must agree, whatever the kill point or the damage ----------------------------------

# The training command, killed with SIGKILL right after one of the two checkpoint managers finished a save
# of a given step, or sent SIGTERM while it evaluates; the patches live in this driver only.
DRIVER = """
import os, signal, sys
from jaxft.training import checkpoint
from jaxft.training import pipeline
how, at = sys.argv[1], int(sys.argv[2])
if how == "sigterm-in-eval":
    real_batches = pipeline.eval_batches
    def batches(*args, **kwargs):
        for i, batch in enumerate(real_batches(*args, **kwargs), start=1):
            if i == at:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch
    pipeline.eval_batches = batches
else:
    real = getattr(checkpoint.Checkpoints, how)
    def save_then_die(self, step, *args, **kwargs):
        real(self, step, *args, **kwargs)
        if step == at:
            self.wait()
            os.kill(os.getpid(), signal.SIGKILL)
    setattr(checkpoint.Checkpoints, how, save_then_die)
sys.argv = ["train.py", *sys.argv[3:]]
from jaxft import main
main.run()
"""


def _jaxft():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from jaxft.training import checkpoint

    return checkpoint


def _latest_state(workdir: Path):
    import orbax.checkpoint as ocp

    ckpts = _jaxft().Checkpoints(str(workdir), read_only=True)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    restored = ckpts.latest.restore(ckpts.latest_step(), args=args)
    ckpts.close()
    assert restored.state is not None and restored.meta is not None, f"{workdir}: no state read back"
    return restored.state, restored.meta


def _killed(how: str, at: int, *flags: str):
    def setup(tmp):
        workdir = tmp / "run"
        command = [PY, "-c", DRIVER, how, str(at), *TRAIN[2:], "--workdir", str(workdir), *flags]
        killed = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True)
        assert killed.returncode == -9, f"the driver was not killed: {killed.stderr[-500:]}"
        return {"command": [*TRAIN, "--workdir", str(workdir), *flags], "run": workdir}

    return setup


def _truncate(directory: Path):
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _copy_of_the_run(tmp, damage=()):
    workdir = tmp / "run"
    shutil.copytree(trained_run(), workdir)
    for part in damage:
        _truncate(workdir / part)
    return workdir


def _damaged_resume(*parts):
    def setup(tmp):
        workdir = _copy_of_the_run(tmp, parts)
        return {"command": [*TRAIN, "--workdir", str(workdir)], "run": workdir}

    return setup


def _altered_newest_state(tmp):
    import numpy as np
    import orbax.checkpoint as ocp

    workdir = _copy_of_the_run(tmp)
    manager = ocp.CheckpointManager(str(workdir / "checkpoints/latest"))
    restored = manager.restore(12)
    state, meta = restored["state"], restored["meta"]
    state["opt_state"][1][0]["mu"]["classifier"]["kernel"][0, 0] = np.float32(
        7.8e37
    )  # as a flipped bit reads
    manager.delete(12)
    manager.save(
        12, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    )
    manager.wait_until_finished()
    manager.close()
    return {"command": [*TRAIN, "--workdir", str(workdir)], "run": workdir}


def _ends_as_uninterrupted(tmp, context):
    import numpy as np

    state, _ = _latest_state(context["run"])
    expected, _ = _latest_state(trained_run())
    flat, want = (_flatten(tree) for tree in (state, expected))
    assert flat.keys() == want.keys() and len(flat) > 10, "another state structure"
    for name in flat:
        assert np.array_equal(flat[name], want[name]), f"{name} differs from the uninterrupted run's"


def _same_final_report(tmp, context):
    _ends_as_uninterrupted(tmp, context)
    final, want = (
        json.loads((w / "final_metrics.json").read_text()) for w in (context["run"], trained_run())
    )
    assert final == want, "another final report than the uninterrupted run's"


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}/").items()}
    if isinstance(tree, list | tuple):
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix}{i}/").items()}
    return {prefix: tree}


def _damaged_best_predict(tmp):
    workdir = _copy_of_the_run(tmp, ["checkpoints/best"])
    (tmp / "in.jsonl").write_text('{"text": "a good film"}\n{"text": "a bad film"}\n')
    command = [PY, "-m", "jaxft.predict", "--workdir", str(workdir), "--input", str(tmp / "in.jsonl")]
    return {"command": [*command, "--output", str(tmp / "p.jsonl")], "cwd": REPO}


def _two_predictions(tmp, context):
    lines = (tmp / "p.jsonl").read_text().splitlines()
    assert len(lines) == 2, f"{len(lines)} predictions for 2 inputs"


def _pending_evaluation(tmp, context):
    _, meta = _latest_state(context["run"])
    assert meta["step"] == 6 and meta["pending_eval"], (
        f"saved step {meta['step']}, pending {meta.get('pending_eval')}"
    )


def _sigterm_in_eval(tmp):
    workdir = tmp / "run"
    flags = ["--config.training.eval_batch_size=16"]
    command = [PY, "-c", DRIVER, "sigterm-in-eval", "2", *TRAIN[2:], "--workdir", str(workdir), *flags]
    return {"command": command, "run": workdir, "cwd": REPO}


# ---- what is loaded back is checked as training checks it --------------------------------------------------


def _edited_run(edit):
    def setup(tmp):
        workdir = _copy_of_the_run(tmp)
        edit(workdir)
        (tmp / "in.jsonl").write_text('{"text": "a good film"}\n')
        command = [PY, "-m", "jaxft.predict", "--workdir", str(workdir), "--input", str(tmp / "in.jsonl")]
        return {"command": [*command, "--output", str(tmp / "p.jsonl")], "watch": workdir, "cwd": REPO}

    return setup


def _reverse_labels(workdir):
    path = workdir / "labels.json"
    labels = json.loads(path.read_text())
    path.write_text(json.dumps({**labels, "labels": labels["labels"][::-1]}))


def _drop_vocabulary(workdir):
    for name in ("tokenizer.json", "vocab.txt"):
        (workdir / "tokenizer" / name).unlink(missing_ok=True)


def _truncate_config(workdir):
    path = workdir / "config.json"
    path.write_text(path.read_text()[:100])


def _output_is_input(tmp):
    (tmp / "in.jsonl").write_text('{"text": "a good film"}\n')
    command = [PY, "-m", "jaxft.predict", "--workdir", str(trained_run()), "--input", str(tmp / "in.jsonl")]
    return {"command": [*command, "--output", str(tmp / "in.jsonl")], "watch": tmp, "cwd": REPO}


def _config_not_a_config(tmp):
    (tmp / "config.json").write_text("{}")
    return {
        "command": [
            PY,
            str(REPO / "train.py"),
            "--config",
            str(tmp / "config.json"),
            "--workdir",
            str(tmp / "run"),
        ],
        "watch": tmp,
    }


CASES = [
    Case(
        "kill-after-best-before-any-latest",
        _killed("save_best", 6, "--config.training.checkpoint_every=1000"),
        0,
        None,
        _same_final_report,
    ),
    Case("kill-after-best-after-latest", _killed("save_best", 6), 0, None, _same_final_report),
    Case("kill-after-latest", _killed("save", 8), 0, None, _same_final_report),
    Case("damaged-newest-latest", _damaged_resume("checkpoints/latest/12"), 0, None, _same_final_report),
    Case(
        "damaged-latest-and-best",
        _damaged_resume("checkpoints/latest/12", "checkpoints/best"),
        0,
        None,
        _ends_as_uninterrupted,
    ),
    Case("altered-newest-latest", _altered_newest_state, 0, None, _same_final_report),
    Case("damaged-best-predict", _damaged_best_predict, 0, None, _two_predictions),
    Case(
        "sigterm-during-evaluation",
        _sigterm_in_eval,
        143,
        "pre-empted (SIGTERM): checkpoint saved at step 6",
        _pending_evaluation,
    ),
    Case("predict-reversed-labels", _edited_run(_reverse_labels), 2, "differs from"),
    Case("predict-tokenizer-without-vocabulary", _edited_run(_drop_vocabulary), 2, "no vocabulary file"),
    Case("predict-truncated-config", _edited_run(_truncate_config), 2, "unreadable"),
    Case("predict-output-is-input", _output_is_input, 2, "is the --input file"),
    Case("config-not-a-config", _config_not_a_config, 2, "not a Python config file"),
    Case("workdir-empty-path", _empty_workdir, 2, "an empty path (an unset variable?)"),
    Case("workdir-hugging-face-dir", _hf_dir, 2, "not a jaxft workdir"),
    Case("workdir-in-use", _in_use, 2, "in use by another run (pid"),
    Case("disk-full-checkpoint", _disk("450k"), 2, "No space left on device (ENOSPC)", _stopped_early),
    Case("disk-full-token-cache", _disk("60k"), 2, "writing the token cache", _nothing_left),
    Case("read-only-new-run", _disk("1m", read_only=True), 2, "Read-only file system (EROFS)", _nothing_left),
    Case("surrogate-train", _surrogate_train, 2, "half of a UTF-16 surrogate pair"),
    Case("surrogate-predict", _surrogate_predict, 2, "half of a UTF-16 surrogate pair"),
    Case("predict-read-only-output", _predict_read_only, 2, "is not writable", _nothing_left),
    Case("export-disk-full", _export_disk_full, 2, "No space left on device (ENOSPC)", _nothing_left),
]


def replay(case: Case) -> tuple[str, str]:
    """Runs `case` in a fresh temporary directory: ("PASS" | "FAIL" | "SKIP", detail)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"redteam-{case.name}-"))
    context = {}
    try:
        context = case.setup(tmp)
        watch = context.get("watch")
        before = snapshot(watch) if watch is not None else None
        result = subprocess.run(
            context["command"],
            cwd=context.get("cwd", tmp),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=600,
        )
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        problems = []
        if result.returncode != case.status:
            problems.append(f"exit status {result.returncode}, expected {case.status}")
        if "Traceback" in result.stderr:
            problems.append("a traceback on stderr")
        errors = sum(line.startswith("error: ") for line in lines)
        if case.stderr is None and errors:
            problems.append("an error: line from a command that must succeed")
        elif case.stderr is not None and (not last.startswith("error: ") or errors != 1):
            problems.append("stderr does not end in exactly one error: line")
        elif case.stderr is not None and case.stderr not in last:
            problems.append(f"{case.stderr!r} not in the last line")
        if watch is not None and snapshot(watch) != before:
            problems.append(f"{watch} changed")
        if case.invariant is not None:
            try:
                case.invariant(tmp, context)
            except AssertionError as error:
                problems.append(str(error))
        return ("FAIL", "; ".join(problems) + f" | {last}") if problems else ("PASS", last)
    except Skip as reason:
        return "SKIP", str(reason)
    finally:
        if "cleanup" in context:
            context["cleanup"]()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    words = argv[1:]
    failed = 0
    for case in CASES:
        if words and not any(word in case.name for word in words):
            continue
        outcome, detail = replay(case)
        failed += outcome == "FAIL"
        print(f"{outcome} {case.name}: {detail}", flush=True)
    for workdir in _TRAINED:
        shutil.rmtree(workdir.parent, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
