"""Few-shot learning: k examples per class, sentence-embedding zero-shot, and SetFit-style few-shot.

Three pieces, each usable alone:

* `sample_per_class` draws k training examples per class (seeded, in file order); `data.k_shot` applies it to
  the train split in `jaxft.training.pipeline.read_splits`, so any trainer run can be a few-shot run.
* Sentence embeddings from jaxft's own `BertEncoder`: mean pooling of the last hidden states over the
  attention mask, then L2 normalisation, which is what sentence-transformers' all-MiniLM-L6-v2 computes
  (Transformer -> Pooling(mean) -> Normalize). `zero_shot_predict` gives each text the class whose
  description ("This is a positive review.") is nearest in cosine similarity: no training example at all.
* SetFit (Tunstall et al. 2022, "Efficient Few-Shot Learning Without Prompts"): contrastive pairs from the
  k-shot examples (same class -> target 1, different -> 0), the encoder fine-tuned so that the cosine
  similarity of a pair's embeddings regresses onto its target (sentence-transformers' CosineSimilarityLoss,
  an MSE), then scikit-learn's `LogisticRegression` fitted on the tuned embeddings of the same examples.
  Here are SetFit's pieces: the pairs, the model (`PairEncoder`) and the loss (`CosineSimilarityTask`);
  `jaxft.recipes.setfit` hands them to the trainer, the train step and optimizer of every jaxft run.

Embedding and zero-shot prediction run on one device: a few-shot set is a few dozen examples.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxft.data import batching, readers, records, tokenize
from jaxft.errors import UserError
from jaxft.models import convert, families
from jaxft.models.bert import BertConfig
from jaxft.tasks import StepLoss

# Tasks whose targets are one class id per example, so "k per class" means something.
K_SHOT_TASKS = ("classification", "pet", "relation")
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ---- k examples per class ----------------------------------------------------------------------------------
def sample_per_class(
    examples: list, labels: np.ndarray, k: int, seed: int, *, label_names: list[str] | None = None
) -> np.ndarray:
    """Indices of k examples of every class, drawn without replacement; the same for the same seed.

    Args:
      examples: the examples the labels belong to (one per label; the first one's file names the error).
      labels: int class ids [N].
      k: examples per class.
      seed: seeds the draw (each class draws from one generator, in class order).
      label_names: the label set; every class in it must have k examples (default: the classes present).

    Returns:
      int64 indices into `examples`, sorted, so the subset keeps file order; k * classes of them.

    Raises:
      UserError: k < 1, or a class with fewer than k examples (naming `data.k_shot` and the class).
    """
    labels = np.asarray(labels)
    if len(examples) != len(labels):
        raise ValueError(f"{len(examples)} examples but {len(labels)} labels")
    if k < 1:
        raise UserError(f"config data.k_shot={k} must be positive (0 turns few-shot sampling off)")
    classes = range(len(label_names)) if label_names is not None else np.unique(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            name = label_names[c] if label_names is not None else str(c)
            where = f" in {records.source_of(examples[0].source)}" if examples else ""
            raise UserError(
                f"config data.k_shot={k}: class {name!r} has only {len(members)} training examples{where}"
            )
        chosen.append(rng.choice(members, k, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def k_shot_subset(
    examples: list, labels: np.ndarray, k: int, seed: int, task_name: str, label_names: list[str]
) -> tuple[list, np.ndarray]:
    """The train split cut to k examples per class (`data.k_shot`), examples and labels kept aligned.

    Raises:
      UserError: a task without one class per example (regression, multilabel, ner, qa), or see
        `sample_per_class`.
    """
    if task_name not in K_SHOT_TASKS:
        raise UserError(
            f"config data.k_shot applies to task.name in {', '.join(K_SHOT_TASKS)} (one class per "
            f"example), not {task_name!r}"
        )
    keep = sample_per_class(examples, labels, k, seed, label_names=label_names)
    return [examples[i] for i in keep], np.asarray(labels)[keep]


# ---- sentence embeddings -----------------------------------------------------------------------------------
def encoder(bert_config, name: str | None = None) -> nn.Module:
    """The config's family's encoder without its pooler: sentence embeddings pool every position."""
    return families.of(bert_config).encoder(bert_config, add_pooling_layer=False, name=name)


def load_encoder(checkpoint_dir: str) -> tuple[dict, BertConfig]:
    """The encoder parameters (no pooler) and config of a Hugging Face checkpoint directory."""
    bert_config = convert.load_config(checkpoint_dir)
    pretrained, _ = convert.read_pretrained(checkpoint_dir)
    bert = {name: tree for name, tree in pretrained["bert"].items() if name != "pooler"}
    dummy = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(encoder(bert_config).init, jax.random.key(0), dummy, jnp.ones_like(dummy))
    init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"])
    missing = set(traverse_util.flatten_dict(init)) - set(traverse_util.flatten_dict(bert))
    if missing:  # every encoder weight must come from the checkpoint: no random part in an embedding
        raise UserError(f"{checkpoint_dir}: no {'/'.join(sorted(missing)[0])} in the checkpoint")
    return convert.merge_pretrained(init, bert, log=lambda _: None), bert_config


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of hidden states [B, L, H] over real tokens (count clamped at 1e-9, as sentence-transformers)."""
    mask = attention_mask.astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) per row (torch's F.normalize), written so a zero row has a finite gradient."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))


def sentence_embeddings(params, batch: dict, bert_config: BertConfig, dropout_rng=None) -> jax.Array:
    """Unit-norm embeddings [B, H] of a batch; dropout (the config's rates) only when given a key."""
    hidden, _ = encoder(bert_config).apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        deterministic=dropout_rng is None,
        rngs={} if dropout_rng is None else {"dropout": dropout_rng},
    )
    return l2_normalize(mean_pool(hidden.astype(jnp.float32), batch["attention_mask"]))


@functools.partial(jax.jit, static_argnames="bert_config")
def embed(params, batch: dict, bert_config: BertConfig) -> jax.Array:
    """Jitted `sentence_embeddings` without dropout; compiles once per batch shape."""
    return sentence_embeddings(params, batch, bert_config)


def tokenize_texts(texts: list[str], tokenizer, max_len: int) -> dict[str, np.ndarray]:
    """`jaxft.data.tokenize.tokenize` features of plain texts (truncated to `max_len` tokens)."""
    examples = [readers.Example(text, None, None, f"text {i}") for i, text in enumerate(texts)]
    return tokenize.tokenize(examples, tokenizer, max_len)[0]


def embed_features(
    features: dict, params, bert_config: BertConfig, max_len: int, batch_size: int = 64, num_buckets: int = 4
) -> np.ndarray:
    """Embeddings [N, H] of tokenised texts, in order; fixed-shape batches, one shape per length bucket."""
    out = np.zeros((len(features["length"]), bert_config.hidden_size), np.float32)
    plan = batching.eval_batch_plan(
        features["length"], batching.bucket_lengths(max_len, num_buckets), batch_size
    )
    for seq_len, indices in plan:
        batch = batching.make_batch(features, None, indices, seq_len, batch_size)
        rows = embed(params, {key: batch[key] for key in _MODEL_INPUTS}, bert_config)
        out[indices] = np.asarray(rows)[: len(indices)]  # padding rows (weight 0) are dropped here
    return out


def embed_texts(
    texts: list[str], tokenizer, params, bert_config: BertConfig, max_len: int, batch_size: int = 64
) -> np.ndarray:
    """Unit-norm sentence embeddings [N, H] of `texts`, in order (see `embed_features`)."""
    return embed_features(tokenize_texts(texts, tokenizer, max_len), params, bert_config, max_len, batch_size)


# ---- zero-shot ---------------------------------------------------------------------------------------------
def zero_shot_predict(text_embeddings: np.ndarray, label_description_embeddings: np.ndarray) -> np.ndarray:
    """The class id [N] whose description embedding [C, H] has the highest cosine similarity to each text."""
    texts = np.asarray(l2_normalize(jnp.asarray(text_embeddings, jnp.float32)))
    labels = np.asarray(l2_normalize(jnp.asarray(label_description_embeddings, jnp.float32)))
    return np.argmax(texts @ labels.T, axis=-1)


# ---- SetFit ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SetFitRecipe:
    """Contrastive fine-tuning hyperparameters; the defaults are those of SetFit's first `SetFitTrainer`."""

    iterations: int = 20  # R: pair-generation rounds; each gives every example one positive and one negative
    epochs: int = 1  # passes over the pairs
    batch_size: int = 16  # pairs per step
    learning_rate: float = 2e-5  # peak AdamW learning rate of the encoder
    weight_decay: float = 0.01  # AdamW decoupled decay (not on biases / LayerNorm)
    warmup_ratio: float = 0.1  # linear warm-up over this fraction of the steps, then linear decay to 0
    max_grad_norm: float = 1.0  # clip gradients to this global norm
    max_len: int = 64  # tokens per text
    num_buckets: int = 4  # length buckets of the pair batches (one compilation each)
    seed: int = 0  # pairs, their order, dropout and the logistic regression


def contrastive_pairs(
    labels: np.ndarray, iterations: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SetFit's pair generation: per round, every example with a random same-class and other-class partner.

    The same-class partner is another example of the class (the example itself only when it is alone);
    SetFit's original `sentence_pairs_generation` may also pick the example itself, a pair whose cosine is
    1 whatever the encoder does, so it teaches nothing.

    Returns:
      (first, second, targets): example indices [2 * iterations * N] each, and float32 targets (1 for a
      same-class pair, 0 otherwise); a round's pairs are (i, positive), (i, negative) for i in order.

    Raises:
      UserError: fewer than two classes (no negative pair exists).
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise UserError("SetFit needs examples of at least two classes to build negative pairs")
    rng = np.random.default_rng(seed)
    same = [
        np.flatnonzero((labels == label) & (np.arange(len(labels)) != i)) for i, label in enumerate(labels)
    ]
    other = [np.flatnonzero(labels != label) for label in labels]
    first, second = [], []
    for _ in range(iterations):
        for i in range(len(labels)):
            first += [i, i]
            second += [rng.choice(same[i]) if len(same[i]) else i, rng.choice(other[i])]
    targets = np.tile(np.array([1.0, 0.0], np.float32), iterations * len(labels))
    return np.asarray(first, np.int64), np.asarray(second, np.int64), targets


def cosine_similarity_loss(first: jax.Array, second: jax.Array, targets: jax.Array, weights: jax.Array):
    """Weighted mean of (cos(first_i, second_i) - target_i)^2: CosineSimilarityLoss without padding rows."""
    errors = _squared_cosine_errors(first, second, targets)
    return jnp.sum(weights * errors) / jnp.maximum(jnp.sum(weights), 1.0)


def _squared_cosine_errors(first: jax.Array, second: jax.Array, targets: jax.Array) -> jax.Array:
    cosine = jnp.sum(l2_normalize(first) * l2_normalize(second), axis=-1)
    return jnp.square(cosine - targets)


class PairEncoder(nn.Module):
    """The sentence embeddings of both texts of each pair: inputs [B, 2, L], output [B, 2, H].

    The encoder's parameters sit under "bert", so the tuned tree's "bert" is what `embed` takes.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids, deterministic: bool = True):
        pairs, _, length = input_ids.shape
        flat = lambda x: x.reshape(2 * pairs, length)  # noqa: E731  (first, second, first, ...)
        hidden, _ = encoder(self.config, name="bert")(
            flat(input_ids), flat(attention_mask), flat(token_type_ids), deterministic=deterministic
        )
        embeddings = l2_normalize(mean_pool(hidden.astype(jnp.float32), flat(attention_mask)))
        return embeddings.reshape(pairs, 2, -1)


@dataclasses.dataclass(frozen=True)
class CosineSimilarityTask(StepLoss):
    """CosineSimilarityLoss as a task's loss for `jaxft.training.steps.train_step`: the sum over the batch's
    pairs and their weight (padding pairs 0), which the step adds over devices before dividing."""

    def loss(self, embeddings: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        errors = _squared_cosine_errors(embeddings[:, 0], embeddings[:, 1], batch["targets"])
        return jnp.sum(batch["weights"] * errors), jnp.sum(batch["weights"])


def pair_batch(features: dict, first, second, targets, buckets: list[int], batch_size: int) -> dict:
    """Fixed-shape batch of `batch_size` pairs: inputs [B, 2, L] (a pair's texts side by side, so that a
    split over devices keeps each pair together), "targets" and "weights" [B]."""
    length = int(max(features["length"][first].max(), features["length"][second].max()))
    seq_len = buckets[int(batching.assign_buckets(np.array([length]), buckets)[0])]
    halves = [batching.make_batch(features, None, side, seq_len, batch_size) for side in (first, second)]
    batch = {key: np.stack([h[key] for h in halves], axis=1) for key in _MODEL_INPUTS}
    batch["targets"] = np.zeros(batch_size, np.float32)
    batch["targets"][: len(targets)] = targets
    batch["weights"] = halves[0]["weights"]
    return batch


def classification_scores(labels: np.ndarray, predictions: np.ndarray) -> dict:
    """Accuracy and macro-F1 (scikit-learn)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro")),
    }


def logistic_head_predict(
    train_embeddings: np.ndarray, train_labels: np.ndarray, eval_embeddings: np.ndarray, seed: int
) -> np.ndarray:
    """SetFit's head: scikit-learn `LogisticRegression` fitted on train embeddings, predicting eval ones."""
    from sklearn.linear_model import LogisticRegression

    head = LogisticRegression(max_iter=1000, random_state=seed).fit(train_embeddings, train_labels)
    return head.predict(eval_embeddings)
