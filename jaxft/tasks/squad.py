"""Extractive QA data: SQuAD v1.1 files, context windows, n-best span decoding, and the official EM / F1.

Windows: a context longer than `max_seq_length` is cut into overlapping windows ([CLS] question [SEP]
context piece [SEP]); consecutive windows share `doc_stride` tokens (Hugging Face's `stride`). Every window
is a row of its own for batching; `example_index` says which question it belongs to, and evaluation groups
a question's windows on the host, wherever they were computed, to give one answer per question.

Answer: among each window's `n_best` highest start and end logits over *context* tokens, the span with the
highest start + end logit, ending at or after its start and at most `max_answer_length` tokens long, mapped
back to characters of the context with the tokenizer's offsets.

Metrics: `normalize_answer`, `exact_match` and `f1` are those of the official SQuAD v1.1 evaluation script
(lower case, no punctuation, no articles a/an/the, single spaces; token-overlap F1; the maximum over the
gold answers; averages times 100).
"""

import collections
import re
import string

import numpy as np

from jaxft.data.squad import QAExample

# ---- windows -------------------------------------------------------------------------------------------


def _cut_questions(questions: list[str], tokenizer, max_query_length: int) -> list[str]:
    """Questions longer than `max_query_length` tokens are cut there (BERT's max_query_length)."""
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [
        question if len(offsets) <= max_query_length else question[: offsets[max_query_length - 1][1]]
        for question, offsets in zip(questions, encoded["offset_mapping"], strict=True)
    ]


def _span_positions(
    offsets: np.ndarray, context: np.ndarray, start_char: int, end_char: int
) -> tuple[int, int]:
    """Token positions of the answer's first and last token in one window; (0, 0) ([CLS]) if not inside."""
    positions = np.flatnonzero(context)
    first, last = positions[0], positions[-1]
    if not (offsets[first, 0] <= start_char and offsets[last, 1] >= end_char):
        return 0, 0
    start = positions[offsets[positions, 0] <= start_char][-1]
    end = positions[offsets[positions, 1] >= end_char][0]
    return int(start), int(end)


def make_windows(
    examples: list[QAExample],
    tokenizer,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    *,
    batch_size: int = 500,
) -> dict[str, np.ndarray]:
    """Tokenises questions with their contexts into windows.

    Returns:
        Per window (W rows): "input_ids", "token_type_ids" (int32 [W, max_seq_length]), "length" (int32 [W]),
        "offsets" (int32 [W, max_seq_length, 2]: character span in the context, -1 outside the context),
        "example_index" (int32 [W]: the question) and "targets" (int32 [W, 2]: start and end token of the
        first gold answer, (0, 0) when it is not inside the window or there is none).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = collections.defaultdict(list)
    for begin in range(0, len(examples), batch_size):
        chunk = examples[begin : begin + batch_size]
        encoded = tokenizer(
            _cut_questions([e.question for e in chunk], tokenizer, max_query_length),
            [e.context for e in chunk],
            truncation="only_second",
            max_length=max_seq_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_token_type_ids=True,
            return_attention_mask=False,
        )
        for w, ids in enumerate(encoded["input_ids"]):
            example = chunk[encoded["overflow_to_sample_mapping"][w]]
            context = np.array([s == 1 for s in encoded.sequence_ids(w)])
            offsets = np.where(context[:, None], np.array(encoded["offset_mapping"][w]), -1)
            target = (0, 0)
            if example.answers:
                text, start = example.answers[0]
                target = _span_positions(offsets, context, start, start + len(text))
            row = np.full(max_seq_length, pad_id, np.int32)
            row[: len(ids)] = ids
            rows["input_ids"].append(row)
            rows["token_type_ids"].append(
                np.pad(encoded["token_type_ids"][w], (0, max_seq_length - len(ids)))
            )
            rows["length"].append(len(ids))
            rows["offsets"].append(
                np.pad(offsets, ((0, max_seq_length - len(ids)), (0, 0)), constant_values=-1)
            )
            rows["example_index"].append(begin + encoded["overflow_to_sample_mapping"][w])
            rows["targets"].append(target)
    return {key: np.asarray(value, np.int32) for key, value in rows.items()}


# ---- decoding ------------------------------------------------------------------------------------------


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    features: dict,
    examples: list[QAExample],
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> list[tuple[str, int, float]]:
    """One answer per question: (text, character start, score), combining all of its windows.

    Args:
        start_logits, end_logits: float [W, L] per window (L >= the windows' width; the rest is ignored).
        features: from `make_windows` ("offsets", "example_index").
        examples: the questions, indexed by "example_index".
        n_best: start and end candidates per window.
        max_answer_length: longest answer in tokens.

    Returns:
        ("", -1, -inf) for a question whose windows hold no valid span.
    """
    offsets, owner = features["offsets"], features["example_index"]
    width = offsets.shape[1]
    best = [("", -1, -np.inf)] * len(examples)
    for w in np.argsort(owner, kind="stable"):  # windows grouped by question, in window order
        valid = offsets[w, :, 0] >= 0
        if not valid.any():
            continue
        start, end = (
            np.where(valid, start_logits[w, :width], -np.inf),
            np.where(valid, end_logits[w, :width], -np.inf),
        )
        starts = np.argsort(-start, kind="stable")[:n_best]
        ends = np.argsort(-end, kind="stable")[:n_best]
        for s in starts:
            for e in ends:
                if not (valid[s] and valid[e]) or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(start[s] + end[e])
                q = owner[w]
                if score > best[q][2]:
                    context = examples[q].context
                    best[q] = (context[offsets[w, s, 0] : offsets[w, e, 1]], int(offsets[w, s, 0]), score)
    return best


# ---- the official SQuAD v1.1 evaluation ----------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace (the official script)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1(prediction: str, truth: str) -> float:
    """Token-overlap F1 of the normalised answers (0 when they share no token)."""
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def question_scores(predictions: dict[str, str], examples: list[QAExample]) -> tuple[list, list]:
    """Each question's exact match and F1 (0 or 1, and in [0, 1]): the maximum over its gold answers; an
    unanswered question, or one without a gold answer, scores 0."""
    ems, scores = [], []
    for example in examples:
        truths = [text for text, _ in example.answers]
        prediction = predictions.get(example.id)
        if prediction is None or not truths:
            ems.append(0.0)
            scores.append(0.0)
            continue
        ems.append(max(exact_match(prediction, truth) for truth in truths))
        scores.append(max(f1(prediction, truth) for truth in truths))
    return ems, scores


def squad_scores(predictions: dict[str, str], examples: list[QAExample]) -> dict:
    """{"exact_match", "f1"} (x100, the maximum over each question's gold answers, averaged over questions;
    an unanswered question scores 0) and "num_questions"."""
    em = score = 0.0
    for one_em, one_f1 in zip(*question_scores(predictions, examples), strict=True):  # in order, as ever
        em += one_em
        score += one_f1
    total = len(examples)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * score / total, "num_questions": total}
