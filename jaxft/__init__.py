"""jaxft: fine-tune pretrained encoders (BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, DeBERTa-v3, ModernBERT)
on NLP tasks with JAX, Flax and Optax.

    import jaxft
    result = jaxft.finetune("sst2", "runs/sst2")        # or a ConfigDict; data as paths or in memory
    predictor = jaxft.load("runs/sst2")
    predictor.predict(["a gripping film"])              # [{"text": ..., "label": ..., "probabilities": ...}]

`finetune`, `load`, `Result` and `Predictor` live in `jaxft.api` (docs/api.md); the shipped configs in
`jaxft.configs`. They are imported on first use, so `import jaxft` does not load JAX.
"""

from jaxft.errors import StorageError, UserError

__version__ = "0.1.0"
__all__ = ["Predictor", "Result", "StorageError", "UserError", "configs", "finetune", "load"]
_API = ("Predictor", "Result", "finetune", "load")


def __getattr__(name: str):
    if name in _API:
        from jaxft import api

        return getattr(api, name)
    if name == "configs":
        import jaxft.configs

        return jaxft.configs
    raise AttributeError(f"module 'jaxft' has no attribute {name!r}")
