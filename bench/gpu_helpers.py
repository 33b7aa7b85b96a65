"""bench/gpu.sh's Python side: one subcommand per job, each writing its JSON at once (a cut-off run keeps it).

    python bench/gpu_helpers.py install OUT_JSON SITE WHEEL_DIR   the wheels whose distribution is missing
    python bench/gpu_helpers.py env OUT_JSON [WHEELS_JSON]        versions, devices, importable modules
    python bench/gpu_helpers.py tokenizer TRAIN_TSV OUT_DIR       a 30,522-token WordPiece vocab
    python bench/gpu_helpers.py tests JUNIT_XML LOG RC OUT_JSON   pytest's outcome counts
    python bench/gpu_helpers.py e2e WORKDIR WALL_S RC OUT_JSON    wall time and steps/s of a train.py run
    python bench/gpu_helpers.py start SUMMARY MODE BUDGET_S       a new summary.json
    python bench/gpu_helpers.py section SUMMARY NAME STATUS SECONDS CAP [NOTE]   one section's outcome

Only the standard library at module level: `install`, `tests`, `e2e` and `section` must work before (and
whether or not) the wheels are installed; `env` and `tokenizer` import what they report on or use.
"""

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile

# jaxft's runtime dependencies (pyproject.toml) by import name, and what the benchmark itself uses.
MODULES = [
    "jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "transformers", "tokenizers", "safetensors",
    "numpy", "sklearn", "scipy", "seqeval", "ml_collections", "absl", "tensorboardX", "tqdm", "matplotlib",
    "yaml", "google.protobuf", "torch", "pytest",
]  # fmt: skip
DISTRIBUTIONS = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "tokenizers", "torch"]
BERT_BASE_VOCAB = 30522


def _write(path: str, obj) -> None:
    """Writes JSON through a temporary file, so a reader never sees half of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _installed(wheel: str) -> str | None:
    """The installed version of the wheel file's distribution, or None."""
    name = os.path.basename(wheel).split("-")[0]
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def install(out_json: str, site: str, wheel_dir: str) -> None:
    """Installs the wheels of `wheel_dir` whose distribution is missing into `site`, for PYTHONPATH.

    `pip install --no-deps --no-index --target SITE`, which leaves the machine's environment as it is; if pip
    is absent or refuses, the (pure-Python) wheels are unpacked into `site` instead. Prints `site` on stdout
    when something went there, else nothing.
    """
    wheels = sorted(os.path.join(wheel_dir, f) for f in os.listdir(wheel_dir) if f.endswith(".whl"))
    present = {os.path.basename(w): _installed(w) for w in wheels}
    missing = [w for w in wheels if present[os.path.basename(w)] is None]
    result = {"already_installed": {k: v for k, v in present.items() if v}, "missing": missing}
    result["method"] = None
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile", "--quiet"]
        proc = subprocess.run([*cmd, "--target", site, *missing], capture_output=True, text=True)
        result["pip_rc"], result["pip_stderr"] = proc.returncode, proc.stderr[-2000:]
        result["method"] = f"pip --target {site}"
        if proc.returncode != 0:
            for wheel in missing:
                with zipfile.ZipFile(wheel) as z:
                    z.extractall(site)
            result["method"] = f"unpacked into {site}"
    _write(out_json, result)
    print(f"wheels: {len(missing)} of {len(wheels)} missing; {result['method']}", file=sys.stderr)
    if missing:
        print(os.path.abspath(site))


def env(out_json: str, wheels_json: str = "") -> None:
    """Records the software and the devices (and `install`'s result); prints the JAX backend on stdout."""
    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "versions": {},
        "modules": {},
    }
    for name in DISTRIBUTIONS:
        try:
            result["versions"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            result["versions"][name] = None
    for module in MODULES:
        try:
            result["modules"][module] = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package (orbax, google) is missing
            result["modules"][module] = False
    result["missing_modules"] = [m for m, ok in result["modules"].items() if not ok]
    if wheels_json and os.path.exists(wheels_json):
        with open(wheels_json) as f:
            result["wheels"] = json.load(f)
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=name,memory.total,driver_version,clocks.max.sm"
        proc = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True)
        result["nvidia_smi"] = proc.stdout.strip() or proc.stderr.strip()
    _write(out_json, result)  # what is known so far, in case importing jax hangs
    import jax

    start = time.perf_counter()
    devices = jax.devices()
    result["jax_backend"] = jax.default_backend()
    result["jax_devices"] = [f"{d.platform}:{d.device_kind}" for d in devices]
    result["jax_init_s"] = round(time.perf_counter() - start, 2)
    _write(out_json, result)
    print(result["jax_backend"])


def tokenizer(train_tsv: str, out_dir: str) -> None:
    """A lower-cased WordPiece vocabulary learnt from the SST-2 train sentences, padded to BERT-base's 30,522.

    SST-2's train split has about 21,000 distinct word pieces; the rest of the table is `[unusedN]` rows (as
    BERT's own vocab has), so the random-init encoder has BERT-base's exact embedding table (30,522 x 768).
    Written as vocab.txt + tokenizer_config.json, the layout of jaxft/configs/tiny_tokenizer.
    """
    from tokenizers import BertWordPieceTokenizer

    start = time.perf_counter()
    with open(train_tsv, encoding="utf-8") as f:
        sentences = [line.split("\t")[0].strip() for line in f.read().splitlines()[1:]]
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(sentences, vocab_size=BERT_BASE_VOCAB, min_frequency=1, show_progress=False)
    vocab = [token for token, _ in sorted(wordpiece.get_vocab().items(), key=lambda item: item[1])]
    learnt = len(vocab)
    vocab += [f"[unused{i}]" for i in range(BERT_BASE_VOCAB - learnt)]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
    _write(os.path.join(out_dir, "tokenizer_config.json"), config)
    seconds = time.perf_counter() - start
    print(f"tokenizer: {learnt} learnt + {BERT_BASE_VOCAB - learnt} unused tokens in {seconds:.1f} s")


def tests(junit_xml: str, log: str, rc: str, out_json: str) -> None:
    """Counts pytest's outcomes from its JUnit XML or, when a timeout left none, from its -v lines."""
    result = {"rc": int(rc), "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "tests": {}}
    if os.path.exists(junit_xml):
        result["source"] = "junit"
        for case in ET.parse(junit_xml).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            outcome, detail = "passed", None
            for tag, key in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
                node = case.find(tag)
                if node is not None:
                    outcome, detail = key, (node.get("message") or "")[:500]
            result[outcome] += 1
            result["tests"][name] = {"outcome": outcome, "seconds": float(case.get("time", 0))}
            if detail:
                result["tests"][name]["detail"] = detail
    elif os.path.exists(log):  # cut off: the short summary never came; count the per-test progress lines
        result["source"] = "log (no JUnit XML: the run was cut off)"
        with open(log, errors="replace") as f:
            for line in f:
                match = re.match(r"^(tests/\S+) (PASSED|FAILED|ERROR|SKIPPED)", line)
                if match:
                    key = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped"}
                    result[key[match.group(2)]] += 1
                    result["tests"][match.group(1)] = {"outcome": key[match.group(2)]}
    _write(out_json, result)
    print(
        f"tests: {result['passed']} passed, {result['failed']} failed, {result['errors']} errors, "
        f"{result['skipped']} skipped (rc {rc})"
    )


def e2e(workdir: str, wall_s: str, rc: str, out_json: str) -> None:
    """Wall time, steps and steps/s of a finished (or cut-off) train.py run, from its metrics.jsonl."""
    result = {"rc": int(rc), "wall_s": round(float(wall_s), 1), "target_wall_s": 90}
    rows = []
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    train = [r for r in rows if r.get("kind") == "train"]
    if train:
        result["steps"] = train[-1]["step"]
        result["steps_per_s_overall"] = round(train[-1]["step"] / float(wall_s), 2)
    if len(train) >= 2:  # between the first and the last log line: compilation of the first bucket excluded
        span = train[-1]["time"] - train[0]["time"]
        result["steps_per_s_logged"] = round((train[-1]["step"] - train[0]["step"]) / span, 2)
        rates = sorted(r["examples_per_s"] for r in train)
        result["examples_per_s_median"] = round(rates[len(rates) // 2], 1)
    evals = [r for r in rows if r.get("kind") == "eval"]
    result["evals"] = [{k: r.get(k) for k in ("step", "accuracy", "loss")} for r in evals]
    for key, name in (("final_metrics", "final_metrics.json"), ("config", "config.json")):
        if os.path.exists(os.path.join(workdir, name)):
            with open(os.path.join(workdir, name)) as f:
                result[key] = json.load(f)
    result["target_met"] = result["rc"] == 0 and float(wall_s) <= result["target_wall_s"]
    _write(out_json, result)
    brief = {k: v for k, v in result.items() if k not in ("evals", "final_metrics", "config")}
    print(f"e2e: {json.dumps(brief)}")


def start(summary: str, mode: str, budget_s: str) -> None:
    """Starts summary.json: the mode ("gpu" or "smoke"), the whole run's time budget, the start time."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write(summary, {"mode": mode, "budget_s": int(budget_s), "started": started, "sections": []})


def section(summary: str, name: str, status: str, seconds: str, cap: str, note: str = "") -> None:
    """Adds one section's outcome to summary.json (rewritten whole after every section)."""
    data = {"sections": []}
    if os.path.exists(summary):
        with open(summary) as f:
            data = json.load(f)
    entry = {"name": name, "status": status, "seconds": round(float(seconds), 1), "cap_s": int(cap)}
    if note:
        entry["note"] = note
    data["sections"].append(entry)
    data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write(summary, data)


if __name__ == "__main__":
    commands = {"install": install, "env": env, "tokenizer": tokenizer, "tests": tests, "e2e": e2e}
    commands.update(start=start, section=section)
    commands[sys.argv[1]](*sys.argv[2:])
