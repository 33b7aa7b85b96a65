"""Shared pytest fixtures.

The suite runs with 8 forced host CPU devices, so every test exercises the multi-device paths; a test that
wants one device passes `devices=jax.devices()[:1]`. The flag must be set before jax is first imported.

XLA's compiled programs are kept in `.jax_cache/` at the repository root (JAX's persistent compilation
cache, every compilation kept), for this process and every subprocess a test starts: many tests compile
the same program (a tiny run, its rerun after a kill), and on CPU compiling is most of their time. The
cache is keyed by the program, the XLA flags and the jax version, so it never serves a stale program; set
`JAX_COMPILATION_CACHE_DIR` to use another directory.
"""

import inspect
import os
import re
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402

# Enough words for the test sentences; anything else becomes [UNK]. "##s" lets "cats" split into word pieces.
TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "a", "cat", "dog", "sat", "on", "mat", "and", "is", "good", "bad", "movie", "film", "very", "not",
    "it", "was", ".", ",", "!", "?", "##s",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> str:
    """A directory holding a tiny BERT WordPiece tokenizer that AutoTokenizer loads as a fast tokenizer.

    transformers 5 ignores `vocab_file=`; the vocab path goes in `vocab=`. save_pretrained then writes
    tokenizer.json and tokenizer_config.json so that AutoTokenizer knows the class.
    """
    import transformers

    root = tmp_path_factory.mktemp("tiny_tokenizer")
    vocab_file = root / "vocab.txt"
    vocab_file.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizerFast(vocab=str(vocab_file))
    out = root / "tokenizer"
    tokenizer.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished run of jaxft/configs/tiny.py (12 steps, evaluations at 6 and 12), shared read-only."""
    from jaxft.configs import tiny
    from jaxft.training import train

    workdir = tmp_path_factory.mktemp("tiny") / "run"
    final = train.train_and_evaluate(tiny.get_config(), str(workdir))
    return workdir, final


# Tiers, by what a test does: one that runs a whole training job (`train_and_evaluate`, a comparison) or a
# process of its own is end-to-end (`e2e`), whether it does so itself, through a helper of its module or
# through a fixture of its module that trains (a task's report, prediction and export checks on a trained
# run); `make check` runs the rest (every parity proof is among them), `make test` runs everything. The one
# session-wide run (`tiny_run`) is paid once for the whole tier, so the tests that only read it (prediction,
# export parity with PyTorch) stay in the fast tier.
_RUNS_A_JOB = re.compile(
    r"\bsubprocess\.|\btrain_and_evaluate\(|\bfinetune\(|\brun_cells?\(|\bcompare\.main\("
)


def _end_to_end_functions(module) -> set[str]:
    """The names of `module`'s functions that run a job, directly or by calling another such function."""
    sources = {}
    for name, obj in vars(module).items():
        function = getattr(obj, "__wrapped__", obj)  # a pytest fixture wraps its function
        if inspect.isfunction(function) and function.__module__ == module.__name__:
            sources[name] = inspect.getsource(function)
    found = {name for name, source in sources.items() if _RUNS_A_JOB.search(source)}
    grown = True
    while grown:
        callers = {
            name
            for name, source in sources.items()
            if name not in found and any(re.search(rf"\b{callee}\(", source) for callee in found)
        }
        found |= callers
        grown = bool(callers)
    return found


def _uses_a_training_fixture(item, by_module) -> bool:
    """Whether a fixture `item` requests (directly or through another fixture) runs a job and is set up
    again for each module or test, rather than once for the session."""
    infos = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        definitions = infos.name2fixturedefs.get(name, ()) if infos is not None else ()
        for definition in definitions[-1:]:
            if definition.scope == "session":
                continue
            function = inspect.unwrap(getattr(definition.func, "__wrapped__", definition.func))
            module = inspect.getmodule(function)
            if module is None:
                continue
            if module not in by_module:
                by_module[module] = _end_to_end_functions(module)
            if name in by_module[module] or function.__name__ in by_module[module]:
                return True
    return False


def pytest_collection_modifyitems(config, items):
    by_module = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        if module not in by_module:
            by_module[module] = _end_to_end_functions(module)
        if (
            item.originalname in by_module[module]
            or getattr(item, "name", "") in by_module[module]
            or _uses_a_training_fixture(item, by_module)
        ):
            item.add_marker(pytest.mark.e2e)
