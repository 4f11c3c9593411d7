#!/usr/bin/env bash
# Every committed result that reads the shipped base's answers (its answers adapter and calibration), regenerated in
# two lanes of one thread each, about an hour on 2 cores. Run after `lineup demo --project P` and
# `lineup world --out W --identities 160 --seed S` for the seed-1, 2 and 3 worlds:
#     bash benchmarks/regenerate_answers.sh P W1 W2 W3
set -euo pipefail
P=$1 W1=$2 W2=$3 W3=$4 R=benchmarks/results
export OMP_NUM_THREADS=1
cp "$P/reports/demo.json" $R/demo.json

answers_lane() {
  python benchmarks/answers.py --base "$P/model" --world "$P/world" --adapter "$P/runs/stage2/adapter" --out $R/answers.json
  for s in 1 2 3; do
    local w=W$s
    python benchmarks/answers.py --base "$P/model" --world "${!w}" --adapter "$P/runs/stage2/adapter" \
      --out $R/answers_seed$s.json
  done
}

search_lane() {
  python benchmarks/dialogue.py --project "$P" --queries 198 --strategies sum_scores --out $R/dialogue_demo.json
  for s in 1 2 3; do
    local w=W$s
    lineup eval --model "$P/model" --adapter "$P/runs/stage2/adapter" --world "${!w}" --task all --answer-weight 0.1 \
      --json $R/demo_seed${s}_eval.json
    python benchmarks/dialogue.py --project "$P" --world "${!w}" --queries 192 --strategies sum_scores \
      --out $R/dialogue_seed$s.json
  done
  python benchmarks/composed_edits.py --base "$P/model" --world "$P/world" --adapter "$P/runs/stage2/adapter" \
    --answer-weight 0.1 --out $R/composed_edits_answers.json
  python benchmarks/composed_edits.py --base "$P/model" --world "$W1" --adapter "$P/runs/stage2/adapter" \
    --answer-weight 0.1 --out $R/composed_edits_seed1_answers.json
}

answers_lane > "$P/regenerate_answers.log" 2>&1 &
search_lane > "$P/regenerate_search.log" 2>&1
wait $!
python benchmarks/seed_gap.py
