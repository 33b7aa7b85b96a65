#!/usr/bin/env bash
# Real-data accuracy benchmarks, one command each; results land in runs/bench/*.json.
#   bench/accuracy.sh DATA_DIR sst2        jaxft, jaxft/configs/sst2.py        (~20-25 min on 2 CPU cores)
#   bench/accuracy.sh DATA_DIR sst2-bf16   the same recipe computing in bfloat16 (float32 weights and state)
#   bench/accuracy.sh DATA_DIR sst2-torch  PyTorch reference, same recipe, evaluated every 500 steps as jaxft
#                                          (SEED=N for another seed: runs/bench/sst2_torch_sN.json)
#   bench/accuracy.sh DATA_DIR imdb-cpu    jaxft, jaxft/configs/imdb.py:cpu    (5k/5k subset at 256 tokens)
#   bench/accuracy.sh DATA_DIR imdb-torch  PyTorch reference on the same subset
#   bench/accuracy.sh DATA_DIR imdb-long   long reviews on a 2k/1k subset: imdb.py:cpu_truncate (256 tokens),
#                                          then cpu_windows (windows of 256, up to 1,014) and cpu_head_tail (512)
# DATA_DIR holds sst2/ and imdb/ (e.g. ../shared/data). Not run by CI.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 DATA_DIR sst2|sst2-bf16|sst2-torch|imdb-cpu|imdb-torch|imdb-long" >&2; exit 2; fi
cd "$(dirname "$0")/.."
data=$(cd "$1" && pwd); job=$2
py=${PYTHON:-.venv/bin/python}
out=runs/bench; mkdir -p "$out"
export JAXFT_DATA=$data HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
jaxft() {  # name config [config overrides...]
  rm -rf "runs/bench_$1"
  local start=$(date +%s)
  "$py" train.py --config "$2" --workdir "runs/bench_$1" --config.training.progress_bar=false "${@:3}"
  local wall=$(( $(date +%s) - start ))
  "$py" - "$1" "$wall" <<'PY'
import json, sys
name, wall = sys.argv[1], int(sys.argv[2])
final = json.load(open(f"runs/bench_{name}/final_metrics.json"))
result = {"impl": "jaxft", "job": name, "wall_s": wall, **final}
json.dump(result, open(f"runs/bench/{name}.json", "w"), indent=2)
print(json.dumps(result))
PY
}
case $job in
  sst2) jaxft sst2 jaxft/configs/sst2.py ;;
  sst2-bf16) jaxft sst2_bf16 jaxft/configs/sst2.py --config.model.dtype=bfloat16 ;;
  imdb-cpu) jaxft imdb_cpu jaxft/configs/imdb.py:cpu ;;
  imdb-long) for variant in truncate windows head_tail; do
      jaxft "imdb_$variant" "jaxft/configs/imdb.py:cpu_$variant"
    done ;;
  sst2-torch) "$py" bench/torch_reference.py --train "$data/sst2/train.tsv" --eval "$data/sst2/dev.tsv" \
      --text-field sentence --max-seq-length 64 --epochs 1 --eval-every 500 --seed "${SEED:-0}" \
      --out "$out/sst2_torch${SEED:+_s$SEED}.json" ;;
  imdb-torch) "$py" bench/torch_reference.py --train "$data/imdb/train.jsonl.gz" --eval "$data/imdb/test.jsonl.gz" \
      --max-seq-length 256 --max-train-examples 5000 --max-eval-examples 5000 --epochs 1 --out "$out/imdb_torch.json" ;;
  *) echo "unknown job $job (sst2, sst2-bf16, sst2-torch, imdb-cpu, imdb-torch, imdb-long)" >&2; exit 2 ;;
esac
