"""The wheel, installed into a clean virtual environment outside the checkout, fine-tunes, predicts and
exports from a CSV with nothing of the repository: the configs, the tiny tokenizer and the demo data ship
inside the package, and the console scripts and the Python API work from any directory.

The new environment gets jaxft from the wheel only; its dependencies come from this interpreter's
site-packages through a `.pth` line added after the wheel is installed (no network here). A `.pth` line only
extends `sys.path`: the checkout's editable install in those site-packages is not activated, which the
first check below proves.
"""

import csv
import json
import os
import subprocess
import sys
import sysconfig

import pytest

from jaxft.configs import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _run(args, cwd, env=None):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def _write_csv(path, source, n):
    with open(source, encoding="utf-8") as f, open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for line in list(f)[:n]:
            row = json.loads(line)
            writer.writerow([row["text"], row["label"]])


def test_the_wheel_fine_tunes_predicts_and_exports_outside_the_checkout(tmp_path):
    dist, venv, home = tmp_path / "dist", tmp_path / "venv", tmp_path / "user"
    home.mkdir()
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, ROOT],
        ROOT,
    )
    (wheel,) = dist.glob("jaxft-*.whl")
    _run([sys.executable, "-m", "venv", venv], home)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], home)
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], home).strip()
    with open(os.path.join(site, "jaxft_test_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PATH=f"{bin_dir}:{env['PATH']}")

    where = _run(
        [python, "-c", "import jaxft, jaxft.configs as c; print(jaxft.__file__, c.path('tiny'))"], home, env
    )
    assert all(path.startswith(site) for path in where.split()), where  # the wheel's, not the checkout's

    _write_csv(home / "train.csv", common.shipped("demo_sentiment/train.jsonl"), 64)
    _write_csv(home / "dev.csv", common.shipped("demo_sentiment/dev.jsonl"), 20)
    shrink = ["--config.training.num_train_steps=2", "--config.training.eval_every=2"]
    data = ["--config.data.train_path=train.csv", "--config.data.eval_path=dev.csv"]
    _run(
        [bin_dir / "jaxft-train", "--config", "jaxft.configs.tiny", "--workdir", "run", *data, *shrink],
        home,
        env,
    )
    _run(
        [bin_dir / "jaxft-predict", "--workdir", "run", "--input", "dev.csv", "--output", "p.jsonl"],
        home,
        env,
    )
    predictions = [json.loads(line) for line in (home / "p.jsonl").read_text().splitlines()]
    assert len(predictions) == 20 and {p["label"] for p in predictions} <= {"negative", "positive"}
    _run([bin_dir / "jaxft-export", "--workdir", "run", "--out", "hf"], home, env)
    assert json.loads((home / "hf" / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"
    ]

    script = (
        "import jaxft\n"
        "result = jaxft.finetune('tiny', 'api_run', train='train.csv', eval='dev.csv',\n"
        "                        overrides={'training.num_train_steps': 2, 'training.eval_every': 2})\n"
        "(record,) = jaxft.load('api_run').predict(['a fine film'])\n"
        "print(result.metrics['eval']['num_examples'], record['label'])\n"
    )
    out = _run([python, "-c", script], home, env).split()
    assert out[-2] == "20" and out[-1] in ("negative", "positive")
