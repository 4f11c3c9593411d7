#!/usr/bin/env bash
# Every committed result that reads the shipped base's answers (its answers adapter and calibration), regenerated in
# two lanes of one thread each: answers.py on the demo's world and every seed world (about 8 min each) in one; the
# dialogues, seed evals and composed edits (about 30 min), then unseen_people.py on every seed world (about 8 min
# each) in the other. Run after `lineup demo --project P` and `lineup world --out Wn --identities 160 --seed n` for
# the seed worlds, given in seed order from 1: answers and all unseen people on every world, seed evals and
# dialogues on the first three.
#     bash benchmarks/regenerate_answers.sh P W1 W2 W3 W4 W5 W6
set -euo pipefail
P=$1 R=benchmarks/results
shift
WORLDS=("$@")
export OMP_NUM_THREADS=1
cp "$P/reports/demo.json" $R/demo.json

answers_lane() {
  python benchmarks/answers.py --base "$P/model" --world "$P/world" --adapter "$P/runs/stage2/adapter" \
    --out $R/answers.json
  for i in "${!WORLDS[@]}"; do
    python benchmarks/answers.py --base "$P/model" --world "${WORLDS[$i]}" --adapter "$P/runs/stage2/adapter" \
      --out $R/answers_seed$((i + 1)).json
  done
}

search_lane() {
  python benchmarks/dialogue.py --project "$P" --queries 198 --strategies sum_scores --out $R/dialogue_demo.json
  for i in 0 1 2; do
    local s=$((i + 1))
    lineup eval --model "$P/model" --adapter "$P/runs/stage2/adapter" --world "${WORLDS[$i]}" --task all \
      --answer-weight 0.1 --json $R/demo_seed${s}_eval.json
    python benchmarks/dialogue.py --project "$P" --world "${WORLDS[$i]}" --queries 192 --strategies sum_scores \
      --out $R/dialogue_seed$s.json
  done
  python benchmarks/composed_edits.py --base "$P/model" --world "$P/world" --adapter "$P/runs/stage2/adapter" \
    --answer-weight 0.1 --out $R/composed_edits_answers.json
  python benchmarks/composed_edits.py --base "$P/model" --world "${WORLDS[0]}" --adapter "$P/runs/stage2/adapter" \
    --answer-weight 0.1 --out $R/composed_edits_seed1_answers.json
  for i in "${!WORLDS[@]}"; do
    python benchmarks/unseen_people.py --base "$P/model" --world "${WORLDS[$i]}" --adapter "$P/runs/stage2/adapter" \
      --out $R/unseen_people_seed$((i + 1)).json
  done
}

answers_lane > "$P/regenerate_answers.log" 2>&1 &
search_lane > "$P/regenerate_search.log" 2>&1
wait $!
python benchmarks/seed_gap.py
