"""What a jaxft workdir is, and the lock that keeps two runs out of one.

A directory is taken as a jaxft workdir (training may write there) unless it holds a `config.json` that
jaxft did not write: a Hugging Face checkpoint directory, a project's settings. Training would replace that
file, so such a directory is refused before a byte is written. Anything else is accepted: a new or empty
directory, a run (killed early, finished, or with a file of the user's beside it), a directory a cluster job
created with its log file in it. `ENTRIES` names what jaxft itself writes at a workdir's top level.

While a run trains, process 0 holds an exclusive `flock` on `WORKDIR/.lock`; a second start on the same
workdir is refused at once. The kernel drops the lock when its process ends however it ends (SIGKILL
included), so a lock left by a dead run never blocks. The file stays (empty) after the run: removing it
would let a third process lock a new file while a second still waits on the old one.
"""

import errno
import fcntl
import json
import os
import re
import shutil

from jaxft import files
from jaxft.errors import UserError

LOCK_FILE = ".lock"
MODEL_CONFIG = "model_config.json"  # the encoder's Hugging Face config, written into every workdir
TOKENIZER_DIR = "tokenizer"  # the tokenizer, saved so that prediction and export need only the workdir
TUNED = "tuned.json"  # what the final reports chose on the eval split (`jaxft.tasks.Task.tuned`)
# Everything jaxft writes at the top of a workdir (MODEL_CONFIG, TOKENIZER_DIR, trained.BASE_FILE,
# writers.METRICS_FILE, trackers.TRACKERS_FILE, ...; tests/test_environment.py checks that they are all here).
ENTRIES = frozenset(
    {
        LOCK_FILE,
        "cache",
        "checkpoints",
        "config.json",
        "labels.json",
        "model_config.json",
        "tokenizer",
        "peft_base.json",
        "metrics.jsonl",
        "tensorboard",
        "eval",
        "final_metrics.json",
        "curves.png",
        "compare.log",  # a `jaxft.compare` cell: written before the cell's run starts
        "cell.json",
        "data",  # `jaxft.finetune`'s splits given in memory, written as files
        "class_weights.json",  # the resolved data.class_weights (training.train.CLASS_WEIGHTS)
        TUNED,
        "trackers.json",  # the MLflow and W&B run ids (jaxft.training.trackers)
        "mlruns",  # the default MLflow file store
        "wandb",  # W&B's run directories
    }
)
_OTHER_NAMES = re.compile(r"config\.before-step-\d+\.json")


def _ours(name: str) -> bool:
    if name in ENTRIES or _OTHER_NAMES.fullmatch(name):
        return True
    # files.write_atomic's temporary file, NAME.<random>.tmp, left by a run killed while writing NAME
    return name.endswith(".tmp") and any(name.startswith(entry + ".") for entry in ENTRIES)


def foreign_entries(workdir: str) -> list[str]:
    """The top-level entries of the directory `workdir` that jaxft does not write, sorted."""
    return sorted(name for name in os.listdir(workdir) if not _ours(name))


def check_path(workdir: str, what: str = "workdir") -> None:
    """Raises `UserError` for an empty or blank path (an unset variable: the run would write into the
    current directory) and for a path that is, or goes through, a file. Reads only."""
    if not workdir.strip():
        raise UserError(f"{what} {workdir!r}: an empty path (an unset variable?); give a directory")
    files.check_directory_path(workdir, what)


def _jaxft_config(path: str) -> bool:
    """Whether the `config.json` at `path` is a jaxft run's (its sections); an unreadable one is left to
    the run's own checks, which name it."""
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return True
    return isinstance(saved, dict) and all(isinstance(saved.get(key), dict) for key in ("model", "training"))


def check(workdir: str, what: str = "workdir") -> None:
    """Raises `UserError` when training may not write into `workdir` (see the module docstring and
    `check_path`). Reads only."""
    check_path(workdir, what)
    config = os.path.join(workdir, "config.json")
    if not os.path.isfile(config) or _jaxft_config(config):
        return
    try:
        foreign = [name for name in foreign_entries(workdir) if name != "config.json"]
    except OSError as error:
        raise UserError(f"{what} {workdir}: cannot list it: {files.os_reason(error)}") from None
    shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
    hint = ""
    if {"model.safetensors", "pytorch_model.bin"} & set(foreign):
        hint = " (a Hugging Face checkpoint goes in model.checkpoint)"
    raise UserError(
        f"{what} {workdir}: not a jaxft workdir: its config.json is not a jaxft run's"
        + (f" and it holds {shown}" if shown else "")
        + f"{hint}; give a new or empty directory"
    )


def _holder(path: str) -> int | None:
    """The pid holding the flock on `path`, from /proc/locks (Linux); None where it cannot be told."""
    try:
        stat = os.stat(path)
        wanted = (os.major(stat.st_dev), os.minor(stat.st_dev), stat.st_ino)
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 4242 00:2b:1234 0 EOF"; a waiting request has "->" after "1:"
                if len(fields) < 6 or fields[1] != "FLOCK":
                    continue
                major, minor, inode = fields[5].split(":")
                if (int(major, 16), int(minor, 16), int(inode)) == wanted and int(fields[4]) > 0:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


class Lock:
    """An exclusive lock on a workdir while a run uses it (`WORKDIR/.lock`, see the module docstring).

    Args:
      workdir: the run's directory; created by `acquire` when missing.
      enabled: False on every process but 0 of a multi-host run: process 0 locks for all of them.
    """

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.workdir = workdir
        self.enabled = enabled
        self.created: str | None = None  # the topmost directory `acquire` created, for a failed start
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock, creating the workdir (and missing parents) first.

        Raises:
          UserError: another process holds the lock (or, as a `files.StorageError`, the lock file cannot be
            created); a directory created here is removed again.
        """
        if not self.enabled:
            return
        path = os.path.join(self.workdir, LOCK_FILE)
        try:
            self._make_directories()
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            self.release()
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                # Not removed even if created here: the holder created it at the same moment, and uses it.
                self.created = None
                pid = _holder(path)
                by = f"another run (pid {pid})" if pid is not None else "another run"
                raise UserError(
                    f"workdir {self.workdir}: in use by {by}; wait for it to end or give another workdir"
                ) from None
            self.remove_created()
            raise files.storage_error(error, path) from None

    def _make_directories(self) -> None:
        # One level at a time: `created` must be a directory this process made, never one that a second
        # start made an instant earlier (it would be removed under that run).
        missing, path = [], os.path.abspath(self.workdir)
        while not os.path.lexists(path):
            missing.append(path)
            path = os.path.dirname(path)
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            if self.created is None:
                self.created = path

    def remove_created(self) -> None:
        """Removes the directory `acquire` created (a start that failed leaves nothing behind)."""
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            self.created = None

    def release(self) -> None:
        """Drops the lock (closing the file is enough); the empty lock file stays."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
