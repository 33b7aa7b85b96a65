"""SetFit (Tunstall et al. 2022): contrastive fine-tuning of the encoder through the trainer, then logistic
regression on the tuned embeddings of the same few-shot examples.

The pieces (pairs, `PairEncoder`, `CosineSimilarityTask`, embeddings, the logistic head) are
`jaxft.strategies.fewshot`'s; this module runs them: the fine-tuning is `jaxft.training.trainer.fit`, the
train step and optimizer of every jaxft run, not a loop of its own.
"""

import dataclasses

import jax
import ml_collections
import numpy as np

from jaxft import config as config_lib
from jaxft.data import batching
from jaxft.models.bert import BertConfig
from jaxft.strategies.fewshot import (
    CosineSimilarityTask,
    PairEncoder,
    SetFitRecipe,
    classification_scores,
    contrastive_pairs,
    embed_features,
    embed_texts,
    logistic_head_predict,
    pair_batch,
    tokenize_texts,
)
from jaxft.training import optim, parallel, trainer


def _pair_batches(features: dict, pairs, recipe: SetFitRecipe):
    """Every epoch's pair batches, in an order drawn from the recipe's seed."""
    first, second, targets = pairs
    buckets = batching.bucket_lengths(recipe.max_len, recipe.num_buckets)
    rng = np.random.default_rng(recipe.seed)
    for _ in range(recipe.epochs):
        order = rng.permutation(len(first))
        for start in range(0, len(first), recipe.batch_size):
            rows = order[start : start + recipe.batch_size]
            yield pair_batch(features, first[rows], second[rows], targets[rows], buckets, recipe.batch_size)


def optimizer_config(recipe: SetFitRecipe) -> ml_collections.ConfigDict:
    """The recipe as the `optimizer` section `jaxft.training.optim.create_optimizer` reads
    (jaxft/configs/default.py's, with the recipe's values): clipping, then AdamW with masked decay, a linear
    warm-up and decay to 0."""
    optimizer = ml_collections.ConfigDict(config_lib.defaults().optimizer.to_dict())
    optimizer.update(
        {
            "name": "adamw",
            "learning_rate": recipe.learning_rate,
            "schedule": "linear",
            "warmup_steps": 0,
            "warmup_ratio": recipe.warmup_ratio,
            "weight_decay": recipe.weight_decay,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "max_grad_norm": recipe.max_grad_norm,
            "layer_decay": 1.0,
        }
    )
    return optimizer


def contrastive_finetune(
    params, bert_config: BertConfig, features: dict, labels: np.ndarray, recipe: SetFitRecipe
) -> tuple[dict, list[float]]:
    """Fine-tunes the encoder on contrastive pairs of the examples; returns (params, loss of every step).

    The run is `jaxft.training.trainer.fit`: the train step of every jaxft run over every local device that
    the pair batch splits evenly over, with the `jaxft.training.optim` optimizer of
    `optimizer_config(recipe)`.
    """
    pairs = contrastive_pairs(labels, recipe.iterations, recipe.seed)
    total = -(-len(pairs[0]) // recipe.batch_size) * recipe.epochs
    devices = jax.local_devices()
    devices = devices[: max(n for n in range(1, len(devices) + 1) if recipe.batch_size % n == 0)]
    losses = trainer.RecordLoss()
    state = trainer.fit(
        {"bert": jax.tree.map(np.array, params)},  # a host copy: the input is left as it is
        optim.create_optimizer(optimizer_config(recipe), total),
        _pair_batches(features, pairs, recipe),
        total,
        model=PairEncoder(bert_config),
        task=CosineSimilarityTask(),
        seed=recipe.seed,
        hooks=[losses],
        parallelism=parallel.create("pmap", devices),
    )
    return state.params["bert"], losses.losses


@dataclasses.dataclass
class SetFitResult:
    """What `setfit` returns: eval predictions, their scores (when eval labels were given), step losses."""

    predictions: np.ndarray
    scores: dict | None
    losses: list[float]
    params: dict


def setfit(
    train_texts: list[str],
    train_labels: np.ndarray,
    eval_texts: list[str],
    eval_labels: np.ndarray | None,
    tokenizer,
    params,
    bert_config: BertConfig,
    recipe: SetFitRecipe | None = None,
) -> SetFitResult:
    """SetFit: contrastive fine-tuning on the few-shot texts, then logistic regression on their embeddings.

    Args:
      train_texts, train_labels: the few-shot examples and their class ids.
      eval_texts, eval_labels: texts to predict, and their class ids to score against (or None).
      tokenizer: a fast tokenizer of the encoder.
      params, bert_config: the encoder (`load_encoder`); not modified.
      recipe: the fine-tuning hyperparameters (None: SetFit's defaults, `SetFitRecipe()`).

    Returns:
      A `SetFitResult`; scores hold "accuracy" and "macro_f1".
    """
    recipe = recipe or SetFitRecipe()
    train_labels = np.asarray(train_labels)
    features = tokenize_texts(train_texts, tokenizer, recipe.max_len)
    tuned, losses = contrastive_finetune(params, bert_config, features, train_labels, recipe)
    train_embeddings = embed_features(features, tuned, bert_config, recipe.max_len)
    eval_embeddings = embed_texts(eval_texts, tokenizer, tuned, bert_config, recipe.max_len)
    predictions = logistic_head_predict(train_embeddings, train_labels, eval_embeddings, recipe.seed)
    scores = None if eval_labels is None else classification_scores(np.asarray(eval_labels), predictions)
    return SetFitResult(predictions, scores, losses, tuned)
