"""SQuAD v1.1 extractive QA with MiniLM-L6: start / end logits over context windows, official EM / F1.

    JAXFT_DATA=DIR python train.py --config jaxft.configs.squad --workdir runs/squad
    JAXFT_DATA=DIR python train.py --config jaxft.configs.squad:tiny --workdir runs/squad_tiny  # smoke

Files: SQuAD v1.1 JSON, `$JAXFT_DATA/squad/train.json` and `$JAXFT_DATA/squad/dev.json` (the official
release calls them train-v1.1.json and dev-v1.1.json: link or copy them under these names). The project's
shared data has only the official dev set, `../shared/data/squad_v1.1/dev-v1.1.json` (48 articles, 10,570
questions): `bench/tasks.sh ../shared/data squad` splits it by article (first 38 articles to train, last 10
to evaluate) into `runs/bench_data/squad/{train,dev}.json` and trains on them; after that, the commands above
run with `JAXFT_DATA=runs/bench_data`.
Windows of 384 tokens sharing 128 (task.doc_stride, Hugging Face's `stride`), questions cut at 64 tokens,
answers of at most 30 tokens from the 20 best starts and ends per window. Recipe: batch 32, AdamW lr 5e-5
with 10% warm-up, weight decay 0.01, 2 epochs; best checkpoint by F1. Measured (`bench/tasks.sh
../shared/data squad`, 2026-12-07, 2-core CPU (AMD EPYC), 24.7 min): 552 steps on the 38 training articles,
EM 46.33 / F1 61.06 on the 1,988 held-out questions (bench/README.md; BERT-base on the whole train set:
80.8 / 88.5).
`:tiny` runs jaxft/configs/tiny.py's random 2-layer model with 32-token windows: a pipeline check.
"""

from jaxft.configs import finetune


def get_config(variant: str = "default"):
    config = finetune.get_config(variant)
    config.task.name = "qa"
    if variant == "default":
        config.data.max_seq_length = 384
        config.task.doc_stride = 128
        config.task.max_query_length = 64
        config.training.num_epochs = 2
    else:  # 32-token windows: a question of at most 12 tokens leaves 17 context tokens, 8 of them shared
        config.task.doc_stride = 8
        config.task.max_query_length = 12
        config.task.max_answer_length = 10
    config.data.train_path = "$JAXFT_DATA/squad/train.json"
    config.data.eval_path = "$JAXFT_DATA/squad/dev.json"
    config.data.text_field = "question"  # prediction input as JSONL / CSV / TSV lines
    config.data.text_pair_field = "context"
    config.training.best_metric = "auto"  # f1
    return config
