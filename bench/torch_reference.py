"""PyTorch reference for the classification, regression and multi-label benchmarks: the same checkpoint and
recipe with transformers' `BertForSequenceClassification`, printing the figures jaxft prints (accuracy,
macro-F1, report; Pearson, Spearman and MSE for `--task regression`; micro- / macro-F1 for `--task
multilabel`), after every epoch ("epochs"), every `--eval-every` steps if given ("evals", as jaxft's
training.eval_every) and at the end. Multi-label reads its files as jaxft's task does (`--format goemotions`
for GoEmotions' TSV), trains with `problem_type="multi_label_classification"` (BCE with logits, the mean
over labels and examples, as jaxft), and with `--tune-threshold` chooses the threshold on the eval file as
jaxft's final reports do (`jaxft.tasks.multilabel.choose_threshold`); `--test` is then evaluated once at it.

    python bench/torch_reference.py --train ../shared/data/sst2/train.tsv --eval ../shared/data/sst2/dev.tsv \
        --text-field sentence --max-seq-length 64 --epochs 1 --out runs/torch_sst2.json
    python bench/torch_reference.py --task regression --train ../shared/data/stsb/train.tsv \
        --eval ../shared/data/stsb/dev.tsv --text-field sentence1 --text-pair-field sentence2 \
        --label-field score --max-seq-length 128 --epochs 3 --warmup-ratio 0.1 --out runs/torch_stsb.json
    python bench/torch_reference.py --task multilabel --format goemotions \
        --train ../shared/data/goemotions/train.tsv --eval ../shared/data/goemotions/dev.tsv \
        --test ../shared/data/goemotions/test.tsv --tune-threshold macro_f1 --max-seq-length 128 --epochs 3 \
        --warmup-ratio 0.1 --out runs/torch_goemotions.json

Recipe (as jaxft/configs/sst2.py): AdamW (torch.optim, weight decay 0.01 off for biases and LayerNorm), lr
5e-5, linear warm-up over 6% of the steps then linear decay, clipping 1.0, batch 32, dropout as in the
checkpoint, seed 0, batches padded to their longest member. Needs torch (`pip install torch==2.13.0`).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxft.configs import common, default  # noqa: E402
from jaxft.data import labels as labels_lib  # noqa: E402
from jaxft.data import readers  # noqa: E402
from jaxft.tasks.multilabel import MultiLabel, choose_threshold  # noqa: E402
from jaxft.training import pipeline  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument(
        "--task", choices=("classification", "regression", "multilabel"), default="classification"
    )
    parser.add_argument("--format", default="auto", help="multilabel: jaxft's data.format (e.g. goemotions)")
    parser.add_argument("--test", default=None, help="multilabel: evaluated once after training")
    parser.add_argument("--tune-threshold", choices=("", "macro_f1", "micro_f1"), default="")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--text-pair-field", default=None)
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--max-train-examples", type=int, default=0)
    parser.add_argument("--max-eval-examples", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (0: off)")
    parser.add_argument("--checkpoint", default=common.minilm_checkpoint())
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch
    import transformers
    from sklearn.metrics import classification_report, f1_score

    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count())
    start = time.time()
    regression, multilabel = args.task == "regression", args.task == "multilabel"
    data = default.get_config().data
    data.format, data.text_field, data.text_pair_field = args.format, args.text_field, args.text_pair_field
    data.label_field = args.label_field
    task = MultiLabel()
    read = {}
    for name, path, limit in (
        ("train", args.train, args.max_train_examples),
        ("eval", args.eval, args.max_eval_examples),
        ("test", args.test, args.max_eval_examples),
    ):
        if path is None:
            continue
        if multilabel:
            examples = task.read(path, data)
        else:
            fields = {"text_field": args.text_field, "text_pair_field": args.text_pair_field}
            examples = readers.read_examples(path, label_field=args.label_field, **fields)
        read[name] = pipeline.subset(examples, limit, args.seed)
    if regression:
        names = ["value"]
    elif multilabel:
        names = task.label_names(read["train"], data)
    else:
        names = labels_lib.build_label_vocab(read["train"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.checkpoint)
    problem = {"regression": "regression", "multilabel": "multi_label_classification"}.get(args.task)
    model = transformers.BertForSequenceClassification.from_pretrained(
        args.checkpoint, num_labels=len(names), problem_type=problem
    )

    def encode(examples):
        pairs = [e.text_pair for e in examples] if args.text_pair_field else None
        texts = [e.text for e in examples]
        enc = tokenizer(texts, pairs, truncation=True, max_length=args.max_seq_length)
        if regression:
            return enc["input_ids"], enc.get("token_type_ids"), np.array([float(e.label) for e in examples])
        if multilabel:
            return enc["input_ids"], enc.get("token_type_ids"), task.encode(examples, names)
        return enc["input_ids"], enc.get("token_type_ids"), labels_lib.encode_labels(examples, names)

    train_ids, train_types, train_labels = encode(read["train"])
    encoded = {name: encode(read[name]) for name in ("eval", "test") if name in read}
    eval_ids, eval_types, eval_labels = encoded["eval"]

    def collate(ids_list, types_list):
        width = max(map(len, ids_list))
        ids = torch.zeros((len(ids_list), width), dtype=torch.long)
        types = torch.zeros((len(ids_list), width), dtype=torch.long)
        for i, ids_row in enumerate(ids_list):
            ids[i, : len(ids_row)] = torch.tensor(ids_row)
            if types_list is not None:
                types[i, : len(ids_row)] = torch.tensor(types_list[i])
        return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": types}

    def probabilities(split: str) -> np.ndarray:
        """Multilabel: the sigmoid of the model's logits for every example of `split`, in float32."""
        ids, types, _ = encoded[split]
        model.eval()
        rows_out = []
        with torch.no_grad():
            for i in range(0, len(ids), 128):
                rows = slice(i, i + 128)
                rows_out.append(
                    torch.sigmoid(model(**collate(ids[rows], types[rows] if types else None)).logits)
                )
        model.train()
        return torch.cat(rows_out).numpy().astype(np.float32)

    def multilabel_metrics(split: str, threshold: float, probs=None) -> dict:
        probs = probabilities(split) if probs is None else probs
        predicted = (probs > np.float32(threshold)).astype(np.int64)
        truth = encoded[split][2].astype(np.int64)
        return {
            "threshold": threshold,
            "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        }

    def evaluate() -> dict:
        if multilabel:
            return multilabel_metrics("eval", 0.5)
        model.eval()
        outputs = []
        with torch.no_grad():
            for i in range(0, len(eval_ids), 128):
                rows = slice(i, i + 128)
                batch = collate(eval_ids[rows], eval_types[rows] if eval_types else None)
                logits = model(**batch).logits
                outputs.extend(logits[:, 0].tolist() if regression else logits.argmax(-1).tolist())
        model.train()
        if regression:
            import scipy.stats

            outputs = np.array(outputs)
            return {
                "pearson": float(scipy.stats.pearsonr(outputs, eval_labels)[0]),
                "spearman": float(scipy.stats.spearmanr(outputs, eval_labels)[0]),
                "mse": float(np.mean((outputs - eval_labels) ** 2)),
            }
        report = classification_report(
            eval_labels, outputs, target_names=names, digits=4, output_dict=True, zero_division=0
        )
        print(classification_report(eval_labels, outputs, target_names=names, digits=4, zero_division=0))
        return {"accuracy": report["accuracy"], "macro_f1": report["macro avg"]["f1-score"], "report": report}

    steps_per_epoch = -(-len(train_ids) // args.batch_size)
    total = steps_per_epoch * args.epochs
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        eps=1e-8,
    )
    warmup = int(np.ceil(args.warmup_ratio * total))
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)
    generator = torch.Generator().manual_seed(args.seed)
    train_start = time.time()
    model.train()
    epochs, evals = [], []
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_ids), generator=generator).tolist()
        for step in range(steps_per_epoch):
            rows = order[step * args.batch_size : (step + 1) * args.batch_size]
            types = [train_types[i] for i in rows] if train_types else None
            batch = collate([train_ids[i] for i in rows], types)
            labels = torch.tensor(train_labels[rows])
            out = model(**batch, labels=labels.float() if regression or multilabel else labels.long())
            optimizer.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            done = epoch * steps_per_epoch + step + 1
            if args.eval_every and done % args.eval_every == 0 and done < total:
                evals.append({"step": done, **{k: v for k, v in evaluate().items() if k != "report"}})
            if step % 100 == 0:
                print(f"epoch {epoch} step {step}/{steps_per_epoch} loss {out.loss.item():.4f}", flush=True)
        epochs.append(evaluate() if epoch < args.epochs - 1 else None)
    train_s = time.time() - train_start
    dev = probabilities("eval") if multilabel else None  # the last epoch's model, read once
    final = multilabel_metrics("eval", 0.5, dev) if multilabel else evaluate()
    epochs[-1] = final
    if multilabel and (args.tune_threshold or "test" in encoded):
        threshold = (
            choose_threshold(encoded["eval"][2], dev, args.tune_threshold)[0] if args.tune_threshold else 0.5
        )
        final = {**final, "tuned": multilabel_metrics("eval", threshold, dev)}
        if "test" in encoded:
            final["test"] = multilabel_metrics("test", threshold)
        print(json.dumps({k: final[k] for k in ("tuned", "test") if k in final}))
    print(json.dumps([{k: v for k, v in e.items() if k != "report"} for e in epochs]))
    result = {
        "impl": "torch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "train_examples": len(train_ids),
        "eval_examples": len(eval_ids),
        "steps": total,
        "train_s": round(train_s, 1),
        "wall_s": round(time.time() - start, 1),
        **final,
        "epochs": [{k: v for k, v in e.items() if k != "report"} for e in epochs],
        "evals": evals + [{"step": total, **{k: v for k, v in final.items() if k != "report"}}],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "report"}))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
