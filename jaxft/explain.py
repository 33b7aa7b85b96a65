"""Why did a trained run predict that: word attributions by integrated gradients or gradient x input.

    python -m jaxft.predict --workdir W --input F.jsonl --output P.jsonl --explain --html P.html
    jaxft.load(W).explain(["a gripping film"])

Integrated gradients (Sundararajan et al. 2017) on the encoder's embedding output `e` (word, position and
token-type embeddings after their LayerNorm: the point adversarial training perturbs,
`jaxft.strategies.adversarial`). For an input `x`, a baseline `b` and an output `f`, token i's attribution is

    IG_i = sum_h (e_x - e_b)[i, h] * integral_0^1 df/de[i, h] (e_b + a (e_x - e_b)) da

with the integral taken by the trapezoid rule over `steps` equal intervals (`steps + 1` gradients, the two
ends weighted half): its error falls as 1 / steps^2 for a smooth `f`. The path is walked through the
"perturbations" collection: the model runs on the real input ids with `(a - 1)(e_x - e_b)` added to its
embedding output, so everything else read from the ids (the [MASK] position of pet, the entity markers of
relation) is the input's. Completeness: the attributions over all tokens sum to `f(x) - f(b)`, up to the
integration error; every record carries that error (`completeness_error`).

Baselines ("pad", the default; "mask"; "zero") replace only the tokens of the example's words, by [PAD],
by [MASK] or by a zero embedding output. Special tokens ([CLS], [SEP], entity markers) and pet's template
keep their embeddings, so their attributions are exactly 0 and the words' attributions alone sum to
`f(x) - f(b)`. Gradient x input (`method="grad_input"`) is `sum_h e_x * df/de` at the input: one gradient
instead of `steps + 1`, no completeness.

Token attributions are summed per word: the tokenizer's words (`word_ids()`; BERT's pre-tokeniser splits
off punctuation, so "film," is two words), their text cut from the input by the tokens' offsets. Words that
truncation cut off have no attribution. `f`, by task (`label` picks another label where one applies):

- classification, pet, relation: the logit of the predicted label (pet: the verbaliser token's logit);
- regression: the predicted value;
- multilabel: the logit of each predicted label, one explanation per label;
- ner: for each predicted entity, the logits of its words' predicted tags summed over their first
  sub-tokens (where the prediction is read), one explanation per entity;
- qa: not implemented (a `UserError`).

`render_html` and `render_png` draw the records: each word coloured by its attribution, green for what
raised `f`, red for what lowered it, scaled per explanation by its largest magnitude.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxft import tasks
from jaxft.data.relations import HEAD_START
from jaxft.errors import UserError
from jaxft.explain_render import explanations, render_html, render_png
from jaxft.strategies import adversarial
from jaxft.tasks.relation import mark_entities
from jaxft.training import inference
from jaxft.training import steps as steps_lib
from jaxft.training.model import create_model

__all__ = ["BASELINES", "METHODS", "attribution_step", "explain", "explanations", "render_html", "render_png"]

METHODS = ("ig", "grad_input")
BASELINES = ("pad", "mask", "zero")
EMBEDDINGS = "embeddings"  # the name of every family's embedding module, whose output is perturbed


# ---- device: attributions of one batch --------------------------------------------------------------------


def attribution_step(
    params,
    batch: dict,
    *,
    model: nn.Module,
    method: str = "ig",
    steps: int = 50,
    baseline: str = "pad",
    pad_id: int = 0,
    mask_id: int | None = None,
) -> dict:
    """Token attributions of one batch on one device.

    Args:
      params: the model's parameters.
      batch: "input_ids", "attention_mask", "token_type_ids" [B, L], and
        "target" [B, C] (or [B, W, C] for a token head, W >= L): `f` of a row is `sum(target * logits)`;
        "word_index" [B, W]: the word of each position, -1 where there is none (baselines keep those).
      model: a module of `jaxft.training.model.create_model`'s kind: an embedding module named
        "embeddings" whose output is marked with `perturb("embedding_output", ...)`.
      method: "ig" or "grad_input".
      steps: intervals of the trapezoid rule (IG).
      baseline: "pad", "mask" or "zero".
      pad_id, mask_id: the tokenizer's [PAD] and [MASK] ids.

    Returns:
      "tokens" [B, W] float32 (0 beyond L), "output" [B]: `f(x)`, and "baseline_output" [B]: `f(b)` (IG;
      0 for grad_input).
    """
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    length, width = ids.shape[1], batch["word_index"].shape[1]
    is_word = batch["word_index"][:, :length] >= 0
    target = batch["target"]
    if target.ndim == 3:
        target = target[:, :length]

    def embedding_output(input_ids):
        _, state = model.apply(
            {"params": params},
            input_ids,
            mask,
            types,
            deterministic=True,
            capture_intermediates=lambda module, name: name == "__call__" and module.name == EMBEDDINGS,
            mutable=["intermediates"],
        )
        (found,) = jax.tree.leaves(state["intermediates"])
        return found

    (zero,), tree = jax.tree.flatten(adversarial.zero_perturbations(model, params, batch))

    def f(delta):
        variables = {"params": params, "perturbations": jax.tree.unflatten(tree, [delta])}
        logits = model.apply(variables, ids, mask, types, deterministic=True)
        return jnp.sum(target * logits, axis=tuple(range(1, logits.ndim)))

    e_x = embedding_output(ids)
    extra = e_x.shape[1] - length  # prompt tuning's vectors after the first position: never words
    words = jnp.concatenate([is_word[:, :1], jnp.zeros_like(is_word[:, :extra]), is_word[:, 1:]], 1)
    if method == "grad_input":
        output, vjp = jax.vjp(f, zero)
        gradient = vjp(jnp.ones_like(output))[0]
        tokens = jnp.sum(e_x.astype(jnp.float32) * gradient.astype(jnp.float32), -1)
        baseline_output = jnp.zeros_like(output)
    else:
        if baseline == "zero":
            e_b = jnp.zeros_like(e_x)
        else:
            e_b = embedding_output(jnp.where(is_word, pad_id if baseline == "pad" else mask_id, ids))
        diff = jnp.where(words[..., None], e_x - e_b, 0).astype(e_x.dtype)
        alphas = jnp.linspace(0.0, 1.0, steps + 1)
        weights = jnp.full(steps + 1, 1.0 / steps).at[jnp.array([0, steps])].set(0.5 / steps)

        def add_gradient(total, alpha_weight):
            alpha, weight = alpha_weight
            values, vjp = jax.vjp(f, ((alpha - 1.0) * diff).astype(diff.dtype))
            return total + weight * vjp(jnp.ones_like(values))[0].astype(jnp.float32), values

        total, values = jax.lax.scan(add_gradient, jnp.zeros(diff.shape, jnp.float32), (alphas, weights))
        tokens = jnp.sum(diff.astype(jnp.float32) * total, -1)
        output, baseline_output = values[-1], values[0]
    if extra:
        tokens = _unextend(tokens, extra)
    return {
        "tokens": jnp.pad(tokens, ((0, 0), (0, width - length))),
        "output": output.astype(jnp.float32),
        "baseline_output": baseline_output.astype(jnp.float32),
    }


def _unextend(x, extra: int):
    """`x` [B, L + extra, ...] without the `extra` positions after the first."""
    return jnp.concatenate([x[:, :1], x[:, 1 + extra :]], axis=1)


# ---- host: words, targets, records ------------------------------------------------------------------------


@dataclasses.dataclass
class Words:
    """An example's words and where their tokens sit in its row of the task's features.

    Attributes:
      words: the words' text, the text's first, then the text pair's (each in reading order).
      segments: 0 for a word of the text, 1 for one of the text pair.
      positions: [max_seq_length] int32: the index of each position's word, -1 where there is none
        (special tokens, a template's own tokens, padding).
      spans: each word's [start, end) characters in its text (relation: in the text with its markers
        written in; ner: in the word itself).
    """

    words: list[str]
    segments: list[int]
    positions: np.ndarray
    spans: list[tuple[int, int]]


def _collect(width: int, tokens) -> Words:
    """`Words` from `(position, segment, word id, start, end, source text)` of each word token."""
    spans, where = {}, []
    for position, segment, word, start, end, source in tokens:
        key = (segment, word)
        first, last, _ = spans.get(key, (start, end, source))
        spans[key] = (min(first, start), max(last, end), source)
        where.append((position, key))
    order = {key: i for i, key in enumerate(sorted(spans))}
    positions = np.full(width, -1, np.int32)
    for position, key in where:
        positions[position] = order[key]
    keys = sorted(spans)
    words = [spans[key][2][spans[key][0] : spans[key][1]].strip() for key in keys]
    segments = [segment for segment, _ in keys]
    return Words(words, segments, positions, [spans[key][:2] for key in keys])


def _check_ids(row, ids, example: int) -> None:
    if list(row) != list(ids):
        raise ValueError(f"example {example}: its words' tokens differ from its features (an alignment bug)")


def _encodings(tokenizer, texts, pairs=None, **kwargs):
    return tokenizer(
        texts,
        pairs,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        **kwargs,
    ).encodings


def example_words(task, examples: list, features: dict, tokenizer, max_seq_length: int) -> list[Words]:
    """The words of each example and where their tokens sit in its row of `features` (the task's own
    `features_for_prediction`), with the tokenizer's `word_ids()` and offsets.

    Raises:
      ValueError: the re-tokenised words do not give the features' ids (an alignment bug, never input).
    """
    special = {i for i in tokenizer.all_special_ids if i is not None}
    # Added special tokens (relation's markers) are not all in all_special_ids.
    special |= {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    align = {"ner": _ner_words, "relation": _relation_words, "pet": _pet_words}.get(task.name, _text_words)
    width = features["input_ids"].shape[1]
    return [
        _collect(width, tokens)
        for tokens in align(task, examples, features, tokenizer, max_seq_length, special)
    ]


def _text_words(task, examples, features, tokenizer, max_seq_length, special):
    """Text (pair) tasks: the rows are the tokenizer's own encodings (`jaxft.data.tokenize.tokenize`)."""
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    texts = [e.text for e in examples]
    truncation = "longest_first" if pairs else True
    encodings = _encodings(tokenizer, texts, pairs, truncation=truncation, max_length=max_seq_length)
    for row, encoding in enumerate(encodings):
        _check_ids(features["input_ids"][row, : len(encoding.ids)], encoding.ids, row)
        tokens = []
        for position, word in enumerate(encoding.word_ids):
            segment, token = encoding.sequence_ids[position], encoding.ids[position]
            if word is not None and segment is not None and token not in special:
                start, end = encoding.offsets[position]
                tokens.append((position, segment, word, start, end, pairs[row] if segment else texts[row]))
        yield tokens


def _ner_words(task, examples, features, tokenizer, max_seq_length, special):
    """NER: the sentence's own words (`jaxft.tasks.tagging.tokenize_words`)."""
    words = [list(e.words) for e in examples]
    encodings = _encodings(
        tokenizer, words, is_split_into_words=True, truncation=True, max_length=max_seq_length
    )
    for row, encoding in enumerate(encodings):
        _check_ids(features["input_ids"][row, : len(encoding.ids)], encoding.ids, row)
        yield [
            (position, 0, word, 0, len(words[row][word]), words[row][word])
            for position, word in enumerate(encoding.word_ids)
            if word is not None
        ]


def _relation_words(task, examples, features, tokenizer, max_seq_length, special):
    """Relation: [CLS] + the window of the marked text's tokens around its markers + [SEP]
    (`jaxft.tasks.relation.tokenize_relations`); the window is found by the head marker, which occurs once."""
    marked = [mark_entities(e.text, e.head, e.tail) for e in examples]
    head_marker = tokenizer.convert_tokens_to_ids(HEAD_START)
    for row, encoding in enumerate(_encodings(tokenizer, marked, add_special_tokens=False)):
        ids, kept = list(features["input_ids"][row]), int(features["length"][row]) - 2
        left = encoding.ids.index(head_marker) - (ids.index(head_marker) - 1)
        _check_ids(ids[1 : 1 + kept], encoding.ids[left : left + kept], row)
        tokens = []
        for j in range(left, left + kept):
            word, token = encoding.word_ids[j], encoding.ids[j]
            if word is not None and token not in special:
                start, end = encoding.offsets[j]
                tokens.append((j - left + 1, 0, word, start, end, marked[row]))
        yield tokens


def _pet_words(task, examples, features, tokenizer, max_seq_length, special):
    """Pet: the texts' tokens where the template puts them (`jaxft.tasks.pet.Pet.text_positions`); the
    template's own words are not the example's."""
    spans = task.text_positions(examples, tokenizer, max_seq_length)
    slots = sorted({slot for row in spans for slot in row})
    texts = {slot: [getattr(e, slot) for e in examples] for slot in slots}
    encodings = {slot: _encodings(tokenizer, texts[slot], add_special_tokens=False) for slot in slots}
    mask, unk = tokenizer.mask_token_id, tokenizer.unk_token_id
    for row in range(len(examples)):
        tokens = []
        for slot, (first, kept) in spans[row].items():
            encoding = encodings[slot][row]
            expected = [unk if token == mask else token for token in encoding.ids[:kept]]
            _check_ids(features["input_ids"][row, first : first + kept], expected, row)
            for j in range(kept):
                if encoding.word_ids[j] is not None:
                    start, end = encoding.offsets[j]
                    segment = int(slot == "text_pair")
                    tokens.append((first + j, segment, encoding.word_ids[j], start, end, texts[slot][row]))
        yield tokens


@dataclasses.dataclass
class _Target:
    """One explanation to compute: an example, the weights of `f` over its logits, what it explains."""

    example: int
    weights: np.ndarray  # [labels], or [max_seq_length, tags] for ner
    info: dict  # "label" (and "probability", ner's "entity"), copied into the record
    key: object = None  # where in the record: None (the one explanation), a label (multilabel), an entity


def labels_asked(task, label, names: list[str]) -> list[str] | None:
    """`label` as the list of labels (ner: entity types) to explain, None for the predicted ones.

    Raises:
      UserError: a label the run does not have, several for a single-label task, a label for regression
        other than its value's name, or a task without explanations (qa).
    """
    if task.name not in ("classification", "pet", "relation", "regression", "multilabel", "ner"):
        raise UserError(f"explain: not implemented for {task.name}")
    if label is None:
        return None
    asked = [label] if isinstance(label, str) else list(label)
    if task.name == "regression":
        if asked != names[:1]:
            raise UserError(f"explain: a regression run explains its value {names[0]!r}, not label {label!r}")
        return None
    known, what = names, "label"
    if task.name == "ner":
        known, what = sorted({name[2:] for name in names if name != "O"}), "entity type"
    for name in asked:
        if name not in known:
            raise UserError(f"explain: {what} {name!r} is not one of the run's: {', '.join(known)}")
    if task.name not in ("multilabel", "ner") and len(asked) != 1:
        raise UserError(f"explain: task {task.name!r} explains one label at a time, not {asked}")
    return asked


def _targets(task, asked, names: list[str], outputs: np.ndarray, records: list, features: dict):
    """The explanations of every example, by task (see the module docstring); `asked`: `labels_asked`."""
    one_hot = np.eye(len(names), dtype=np.float32)
    out = []
    if task.name == "regression":
        return [_Target(i, np.ones(1, np.float32), {"label": names[0]}) for i in range(len(outputs))]
    if task.name == "ner":
        for i, record in enumerate(records):
            for j, entity in enumerate(record["entities"]):
                if asked is not None and entity["type"] not in asked:
                    continue
                weights = np.zeros((features["input_ids"].shape[1], len(names)), np.float32)
                for word in range(entity["start"], entity["end"]):
                    position = np.flatnonzero(features["word_index"][i] == word)
                    weights[position, names.index(record["tags"][word])] = 1.0
                out.append(_Target(i, weights, {"label": entity["type"], "entity": entity["text"]}, j))
        return out
    for i, probabilities in enumerate(outputs):
        if task.name == "multilabel":
            threshold = np.float32(task.threshold)  # the device's float32 comparison, as predictions make it
            chosen = asked or [n for n, p in zip(names, probabilities, strict=True) if p > threshold]
        else:
            chosen = asked or [names[int(probabilities.argmax())]]
        for name in chosen:
            index = names.index(name)
            info = {"label": name, "probability": float(probabilities[index])}
            out.append(_Target(i, one_hot[index], info, name))
    return out


def _explanation(words: Words, target: _Target, n: int, results: dict, method: str, pair: bool) -> dict:
    """The record's keys for explanation `n` of `results` (`attribution_step`'s rows): its tokens' scores
    summed per word (`attributions`, `pair_attributions`), and `explanation`."""
    is_word = words.positions >= 0
    scores = np.bincount(
        words.positions[is_word],
        weights=results["tokens"][n][is_word].astype(np.float64),
        minlength=len(words.words),
    )
    info = {**target.info, "output": float(results["output"][n])}
    if method == "ig":
        info["baseline_output"] = float(results["baseline_output"][n])
        info["completeness_error"] = float(scores.sum() - (info["output"] - info["baseline_output"]))
    values = {"attributions": _pairs(words, scores, 0), "explanation": info}
    if pair:
        values["pair_attributions"] = _pairs(words, scores, 1)
    return values


def _pairs(words: Words, scores: np.ndarray, segment: int) -> list:
    return [
        [w, float(s)] for w, g, s in zip(words.words, words.segments, scores, strict=True) if g == segment
    ]


def explain(
    run,
    examples: list,
    *,
    label=None,
    steps: int = 50,
    method: str = "ig",
    baseline: str = "pad",
    batch_size: int = 32,
    devices=None,
    progress: bool = False,
) -> list[dict]:
    """The prediction records of `examples` (`jaxft-predict`'s lines) with their word attributions.

    Each record gains `attributions`, a list of [word, score] pairs in word order (pairs: the text pair's
    in `pair_attributions`), and `explanation`: the explained `label` (and its `probability`), `output`
    (`f(x)`), and for IG `baseline_output` (`f(b)`) and `completeness_error` (the words' sum minus
    `f(x) - f(b)`). Multi-label records hold both keyed by label; NER records hold lists parallel to
    `entities` (an entity's `explanation` names its text as `entity`).

    Args:
      run: a `jaxft.predict.TrainedRun`.
      examples: the run's task's examples (`task.read`).
      label: the label to explain instead of the predicted one (multilabel: a label or a list of them;
        ner: an entity type, explaining that type's entities only; regression: its value's name or None).
      steps: intervals of IG's trapezoid rule (`steps + 1` gradients per explanation).
      method: "ig" (integrated gradients) or "grad_input" (gradient x input).
      baseline: IG's baseline: "pad", "mask" or "zero" (module docstring).
      batch_size: explanations per batch (each costs `steps + 1` forward and backward passes).
      devices: the devices to run on (default: every process's).
      progress: show progress bars.

    Raises:
      UserError: qa, an unknown method or baseline, steps < 1, a label the run does not have, a "mask"
        baseline without a mask token.
    """
    task = tasks.from_config(run.config)
    asked = labels_asked(task, label, run.label_names)
    if method not in METHODS:
        raise UserError(f"explain: method {method!r} must be one of {', '.join(METHODS)}")
    if baseline not in BASELINES:
        raise UserError(f"explain: baseline {baseline!r} must be one of {', '.join(BASELINES)}")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise UserError(f"explain: steps {steps!r} must be a positive number of integration intervals")
    if batch_size < 1:
        raise UserError(f"explain: batch_size {batch_size}: must be a positive number of examples")
    tokenizer, names = run.tokenizer, run.label_names
    if method == "ig" and baseline == "mask" and tokenizer.mask_token_id is None:
        raise UserError("explain: baseline 'mask' needs a tokenizer with a mask token; this one has none")
    max_seq_length = run.config.data.max_seq_length
    model = create_model(run.config, run.bert_config, len(names), tokenizer)
    features = task.features_for_prediction(examples, tokenizer, max_seq_length)
    predict_step = functools.partial(steps_lib.predict_step, model=model, task=task)
    outputs = inference.run_batches(
        run.config, run.params, features, predict_step, batch_size, progress, devices=devices
    )
    records = list(task.prediction_records(examples, outputs, features, names))
    words = example_words(task, examples, features, tokenizer, max_seq_length)
    targets = _targets(task, asked, names, outputs, records, features)
    if targets:
        rows = np.array([t.example for t in targets])
        step = functools.partial(
            attribution_step,
            model=model,
            method=method,
            steps=int(steps),
            baseline=baseline,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            mask_id=tokenizer.mask_token_id,
        )
        results = inference.run_batches(
            run.config,
            run.params,
            {key: features[key][rows] for key in ("input_ids", "token_type_ids", "length")},
            step,
            min(batch_size, len(rows)),  # no padding rows beyond those the devices need: each costs steps + 1
            progress,
            devices=devices,
            extra={
                "target": np.stack([t.weights for t in targets]),
                "word_index": np.stack([words[i].positions for i in rows]),
            },
            desc="explain",
        )
    pair = bool(examples) and getattr(examples[0], "text_pair", None) is not None
    shape = {"multilabel": dict, "ner": list}.get(task.name)  # several explanations per record
    for record in records:
        if shape is not None:
            record["attributions"], record["explanation"] = shape(), shape()
            if pair:
                record["pair_attributions"] = shape()
    for n, target in enumerate(targets):
        values = _explanation(words[target.example], target, n, results, method, pair)
        record = records[target.example]
        for key, value in values.items():
            if task.name == "multilabel":
                record[key][target.key] = value
            elif task.name == "ner":
                record[key].append(value)
            else:
                record[key] = value
    return records
