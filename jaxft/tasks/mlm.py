"""Continued masked-LM pre-training (task.name="mlm"): BERT's objective on unlabelled text.

Data: a `.txt` file (a document a line, `data.format="txt"` or the extension) or the `data.text_field` of any
other source (labels ignored), as rows of token ids packed or one per document
(`jaxft.data.pretraining.token_rows`). The rows hold the original tokens: the masks are drawn on the device.

Masking (`mask_tokens`): each maskable token (never a special token or padding) is chosen with
`probability`, or with `whole_word` each word, all of its pieces together. A chosen token becomes the mask
token with `mask_ratio`, a random id of the tokenizer with `random_ratio`, else stays as it is; its label is
its original id, every other label `IGNORE` (Devlin et al. 2019; Hugging Face's
`DataCollatorForLanguageModeling`). A row's draws come from `fold_in(key, row index)`: its mask depends on
the key and on which row of the split it is, never on the device, micro-batch or batch it lands in. In
training the key is the step's input key (`jaxft.training.steps.input_key`, apart from the dropout keys),
so every step draws new masks and a resumed run draws the same ones again; evaluation uses one fixed key,
`EVAL_MASK_SEED`, so every evaluation of every run scores the same masked tokens.

The head (`jaxft.models.heads.MaskedLM`) runs only at the chosen positions (`prediction_slots`): at most
`capacity(n)` of a batch's n tokens, 1.5 times the expected number plus 64, far beyond any draw a batch
makes (more than 7 standard deviations at any size); a chosen token beyond it would go unscored. The loss is
the cross-entropy summed over the scored tokens, with their count as the weight, so the step's mean is over
every masked token of the global batch. The report: masked-token accuracy, the mean cross-entropy (loss) and
its exponential, the perplexity.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxft.data import pretraining
from jaxft.errors import UserError
from jaxft.tasks.base import IGNORE, Task, TaskReport, refuse_given_labels

EVAL_MASK_SEED = 15  # the key of every evaluation's masks: the same masked tokens in every run


def mask_tokens(
    key: jax.Array,
    index: jax.Array,
    input_ids: jax.Array,
    word_pieces: jax.Array,
    *,
    probability: float,
    mask_ratio: float,
    random_ratio: float,
    whole_word: bool,
    mask_token_id: int,
    vocab_size: int,
) -> tuple[jax.Array, jax.Array]:
    """BERT's masking of a batch of rows (module docstring).

    Args:
        key: a typed PRNG key.
        index: `[B]` int, each row's index in its split (draws are per row: `fold_in(key, index)`).
        input_ids: `[B, L]` original token ids.
        word_pieces: `[B, L]` `jaxft.data.pretraining` values: `SPECIAL` (never chosen), `WORD_START`,
            `CONTINUATION`.
        probability: chance that a token (with `whole_word`, a word) is chosen.
        mask_ratio: share of the chosen tokens replaced by `mask_token_id`.
        random_ratio: share replaced by a random id in [0, vocab_size).
        whole_word: choose words, each piece taking its word's draw.
        mask_token_id: the mask token's id.
        vocab_size: the tokenizer's size (`len(tokenizer)`), the range of random ids.

    Returns:
        (the masked `input_ids`, labels `[B, L]`: the original id where chosen, `IGNORE` elsewhere).
    """
    length = input_ids.shape[-1]

    def draws(row):
        choose, kind, token = jax.random.split(jax.random.fold_in(key, row), 3)
        return (
            jax.random.uniform(choose, (length,)),
            jax.random.uniform(kind, (length,)),
            jax.random.randint(token, (length,), 0, vocab_size, input_ids.dtype),
        )

    u_choose, u_kind, random_ids = jax.vmap(draws)(index)
    if whole_word:  # every piece reads the draw at its word's first piece
        starts = jnp.where(word_pieces == pretraining.WORD_START, jnp.arange(length), 0)
        u_choose = jnp.take_along_axis(u_choose, jax.lax.cummax(starts, axis=1), axis=1)
    chosen = (word_pieces != pretraining.SPECIAL) & (u_choose < probability)
    to_mask = chosen & (u_kind < mask_ratio)
    to_random = chosen & (u_kind >= mask_ratio) & (u_kind < mask_ratio + random_ratio)
    masked = jnp.where(to_mask, mask_token_id, jnp.where(to_random, random_ids, input_ids))
    return masked.astype(input_ids.dtype), jnp.where(chosen, input_ids, IGNORE).astype(jnp.int32)


def capacity(tokens: int, probability: float) -> int:
    """How many of a batch's `tokens` positions the head scores at most: 1.5 times the expected number of
    chosen tokens plus 64, capped at `tokens`."""
    return min(tokens, math.ceil(1.5 * probability * tokens) + 64)


def prediction_slots(labels: jax.Array, probability: float) -> tuple[jax.Array, jax.Array]:
    """The flat positions `[K]` of the labelled tokens of `labels` `[B, L]` (row-major, the first
    `capacity(B * L)` of them) and their labels `[K]` (`IGNORE` in the slots left over)."""
    flat = labels.reshape(-1)
    size = capacity(flat.shape[0], probability)
    chosen = flat != IGNORE
    positions = jnp.nonzero(chosen, size=size, fill_value=0)[0]
    used = jnp.arange(size) < jnp.sum(chosen)
    return positions, jnp.where(used, flat[positions], IGNORE)


def _token_losses(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy of each scored slot (0 where its target is `IGNORE`) and the slots' weights."""
    valid = targets != IGNORE
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, targets, 0))
    return jnp.where(valid, losses, 0.0), valid.astype(jnp.float32)


def mlm_report(loss_sum: float, correct: int, count: int, digits: int = 4) -> tuple[dict, str]:
    """Masked-token accuracy, mean cross-entropy and perplexity from the sums, as a dict and a text table.

    With no masked token the three are NaN.
    """
    loss = loss_sum / count if count else math.nan
    report = {
        "accuracy": correct / count if count else math.nan,
        "loss": loss,
        "perplexity": math.exp(loss) if count and loss < 700 else (math.inf if count else math.nan),
        "masked_tokens": int(count),
    }
    width = max(map(len, report))
    lines = [f"{key:<{width}}  {report[key]:.{digits}f}" for key in ("accuracy", "loss", "perplexity")]
    lines.append(f"{'masked_tokens':<{width}}  {count}")
    return report, "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class MaskedLanguageModel(Task):
    """Masked-LM training on unlabelled text (module docstring).

    Attributes:
        probability, mask_ratio, random_ratio, whole_word: the masking (`task.mlm_probability`,
            `task.mlm_mask_ratio`, `task.mlm_random_ratio`, `task.whole_word_mask`).
        packing: pack the documents into full rows (`task.mlm_packing`).
        mask_token_id, vocab_size: the tokenizer's mask token and size, which training draws with; set by
            `for_tokenizer` (-1 and 0 until then).
    """

    name = "mlm"
    head = "lm"
    default_metric = "loss"
    summary_metrics = ("loss", "perplexity", "accuracy", "masked_tokens")

    probability: float = 0.15
    mask_ratio: float = 0.8
    random_ratio: float = 0.1
    whole_word: bool = False
    packing: bool = True
    mask_token_id: int = -1
    vocab_size: int = 0

    # ---- host: data --------------------------------------------------------------------------------------
    def read(self, path: str, data: ml_collections.ConfigDict, *, require_label: bool = True) -> list:
        """A `.txt` file's lines (or any file with data.format="txt"), else the texts of another source."""
        plain = path[: -len(".gz")] if path.endswith(".gz") else path
        if data.format == "txt" or (data.format == "auto" and plain.lower().endswith(".txt")):
            return pretraining.read_text_lines(path)
        return super().read(path, data, require_label=False)  # labels ignored; text pairs refused by check

    def label_names(self, examples: list, data: ml_collections.ConfigDict) -> list[str]:
        refuse_given_labels(data, self.name)
        return []  # the outputs are the vocabulary's

    def check_label_names(self, names: list[str], data: ml_collections.ConfigDict) -> None:
        if names:
            raise UserError(f"the label set {names} of the run being resumed does not fit task.name='mlm'")

    def encode(self, examples: list, names: list[str]) -> np.ndarray:
        return np.zeros(len(examples), np.int32)  # no targets: the masks make them

    def tokenize(self, examples: list, tokenizer, data, cache_dir: str | None, path: str, names) -> dict:
        return pretraining.token_rows(examples, tokenizer, data.max_seq_length, packing=self.packing)

    def features_for_prediction(self, examples: list, tokenizer, max_seq_length: int) -> dict:
        raise UserError(
            "a task.name='mlm' run predicts no labels: export it (a *ForMaskedLM model), or fine-tune from "
            "it with model.init_from_workdir"
        )

    def for_tokenizer(self, tokenizer) -> "MaskedLanguageModel":
        """This task with the tokenizer's mask token and size, which the train step draws with.

        Raises:
            UserError: a tokenizer without a mask, classifier or separator token.
        """
        if tokenizer.mask_token_id is None:
            raise UserError("task.name='mlm' needs a tokenizer with a mask token; this one has none")
        pretraining.special_ids(tokenizer)
        mask_token_id = int(tokenizer.mask_token_id)
        return dataclasses.replace(self, mask_token_id=mask_token_id, vocab_size=len(tokenizer))

    # ---- device ------------------------------------------------------------------------------------------
    def _masked(self, batch: dict, key: jax.Array) -> dict:
        if self.mask_token_id < 0:
            raise ValueError("the mlm task has no mask token id yet (MaskedLanguageModel.for_tokenizer)")
        ids, labels = mask_tokens(
            key,
            batch["index"],
            batch["input_ids"],
            batch["word_pieces"],
            probability=self.probability,
            mask_ratio=self.mask_ratio,
            random_ratio=self.random_ratio,
            whole_word=self.whole_word,
            mask_token_id=self.mask_token_id,
            vocab_size=self.vocab_size,
        )
        return {**batch, "input_ids": ids, "labels": labels}

    def train_inputs(self, batch: dict, key: jax.Array) -> dict:
        """The batch with this step's masks (`key`: the step's input key)."""
        return self._masked(batch, key)

    def eval_inputs(self, batch: dict) -> dict:
        """The batch with the fixed evaluation masks (`EVAL_MASK_SEED`)."""
        return self._masked(batch, jax.random.key(EVAL_MASK_SEED))

    def model_inputs(self, batch: dict) -> dict:
        return {"positions": prediction_slots(batch["labels"], self.probability)[0]}

    def loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        """(Cross-entropy summed over the masked tokens, their count); `logits` are at `model_inputs`'s
        positions."""
        losses, weights = _token_losses(logits, prediction_slots(batch["labels"], self.probability)[1])
        return losses.sum(), weights.sum()

    def eval_outputs(self, logits: jax.Array, batch: dict) -> dict:
        targets = prediction_slots(batch["labels"], self.probability)[1]
        losses, weights = _token_losses(logits, targets)
        correct = (jnp.argmax(logits, axis=-1) == targets) & (targets != IGNORE)
        return {"loss_sum": losses.sum(), "count": weights.sum(), "correct": correct.sum()}

    def predict_outputs(self, logits: jax.Array) -> jax.Array:
        raise NotImplementedError("an mlm run predicts no labels")

    # ---- host: reports, export ---------------------------------------------------------------------------
    def report(self, totals: dict, split, names: list[str], data: ml_collections.ConfigDict) -> TaskReport:
        count = int(round(float(totals["count"])))
        report, text = mlm_report(float(totals["loss_sum"]), int(totals["correct"]), count)
        return TaskReport(report, text, dict(report))

    def export_config(self, names: list[str]) -> dict:
        """`BertForMaskedLM` (the family's `*ForMaskedLM`): the model as it was pre-trained further."""
        return {"architectures": ["BertForMaskedLM"]}
