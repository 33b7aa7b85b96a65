#!/usr/bin/env bash
# Real-data task benchmarks, one command each; results land in runs/bench/<job>.json.
#   bench/tasks.sh DATA_DIR mrpc     jaxft, jaxft/configs/mrpc.py: MiniLM, sentence pairs, 3 epochs; dev + MSR test
#                                    (classification report + F1 of class "1")
#   bench/tasks.sh DATA_DIR conll03  jaxft, jaxft/configs/conll03.py: MiniLM, NER, 3 epochs; dev (testa) + test
#                                    (testb), seqeval strict IOB2 entity F1 + token accuracy
#   bench/tasks.sh DATA_DIR squad    jaxft, jaxft/configs/squad.py: MiniLM, extractive QA, 2 epochs, official EM/F1;
#                                    SQuAD v1.1 dev split by article (38 articles train / 10 eval), as only
#                                    dev is available (a GPU job: 384-token windows)
#   bench/tasks.sh DATA_DIR stsb     jaxft/configs/stsb.py: regression, 3 epochs; dev Pearson / Spearman
#   bench/tasks.sh DATA_DIR stsb-torch  PyTorch reference (bench/torch_reference.py), the same recipe
#   bench/tasks.sh DATA_DIR goemotions  jaxft/configs/multilabel.py: 28 labels, 3 epochs; dev + test macro/micro-F1
#                                    at the threshold that maximises dev macro-F1
#   bench/tasks.sh DATA_DIR goemotions-torch  PyTorch reference (bench/torch_reference.py), the same recipe
#   bench/tasks.sh DATA_DIR semeval  jaxft/configs/relation.py: entity markers, 5 epochs; test official macro-F1
#   bench/tasks.sh DATA_DIR semeval_cls  the same with [CLS] pooling
#   bench/tasks.sh DATA_DIR newsgroups  jaxft/configs/newsgroups.py: 20 topics, headers kept, 3 epochs; test accuracy
# DATA_DIR holds mrpc/, conll2003/, squad_v1.1/, stsb/, goemotions/, semeval2010_task8/, 20newsgroups/
# (e.g. ../shared/data). Extra arguments go to train.py
# (e.g. --config.training.num_epochs=1). Not run by CI.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 DATA_DIR mrpc|conll03|squad|stsb|stsb-torch|goemotions|goemotions-torch|semeval|semeval_cls|newsgroups" >&2; exit 2; fi
cd "$(dirname "$0")/.."
data=$(cd "$1" && pwd); job=$2; shift 2
py=${PYTHON:-.venv/bin/python}
out=runs/bench; mkdir -p "$out"
export JAXFT_DATA=$data HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case $job in
  mrpc) config=jaxft/configs/mrpc.py ;;
  conll03) config=jaxft/configs/conll03.py ;;
  stsb) config=jaxft/configs/stsb.py ;;
  stsb-torch)  # jaxft/configs/finetune.py's recipe: 128 tokens, batch 32, lr 5e-5, 10% warm-up, 3 epochs
    exec "$py" bench/torch_reference.py --train "$data/stsb/train.tsv" --eval "$data/stsb/dev.tsv" \
      --task regression --text-field sentence1 --text-pair-field sentence2 --label-field score \
      --max-seq-length 128 --epochs 3 --warmup-ratio 0.1 --out "$out/stsb_torch.json" "$@" ;;
  goemotions) config=jaxft/configs/multilabel.py ;;
  goemotions-torch)  # jaxft/configs/multilabel.py's recipe; its model after the last epoch
    exec "$py" bench/torch_reference.py --task multilabel --format goemotions --train "$data/goemotions/train.tsv" \
      --eval "$data/goemotions/dev.tsv" --test "$data/goemotions/test.tsv" --tune-threshold macro_f1 \
      --max-seq-length 128 --epochs 3 --lr 2e-4 --warmup-ratio 0.1 --out "$out/goemotions_torch.json" "$@" ;;
  semeval) config=jaxft/configs/relation.py ;;
  semeval_cls) config=jaxft/configs/relation.py; set -- --config.task.relation_pooling=cls "$@" ;;
  newsgroups) config=jaxft/configs/newsgroups.py ;;
  squad) config=jaxft/configs/squad.py
    mkdir -p runs/bench_data/squad
    "$py" - "$data/squad_v1.1/dev-v1.1.json" runs/bench_data/squad <<'PY'
import json, sys
source, out = sys.argv[1], sys.argv[2]
dev = json.load(open(source))
for name, articles in (("train", dev["data"][:38]), ("dev", dev["data"][38:])):
    json.dump({"version": dev["version"], "data": articles}, open(f"{out}/{name}.json", "w"))
PY
    export JAXFT_DATA=$(pwd)/runs/bench_data ;;
  *) echo "unknown job $job (mrpc, conll03, squad, stsb, stsb-torch, goemotions, goemotions-torch, semeval, semeval_cls, newsgroups)" >&2; exit 2 ;;
esac
rm -rf "runs/bench_$job"
start=$(date +%s)
"$py" train.py --config "$config" --workdir "runs/bench_$job" --config.training.progress_bar=false "$@"
wall=$(( $(date +%s) - start ))
"$py" - "$job" "$wall" "$config" "$@" <<'PY'
import json, platform, sys, time
name, wall, config, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
final = json.load(open(f"runs/bench_{name}/final_metrics.json"))
result = {
    "impl": "jaxft", "job": name, "config": config, "args": args, "wall_s": wall,
    "date": time.strftime("%Y-%m-%d"), "machine": platform.node(), **final,
}
json.dump(result, open(f"runs/bench/{name}.json", "w"), indent=2)
print(json.dumps(result))
PY
