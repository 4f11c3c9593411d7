"""How far the re-ranked searches move from the demo's world to worlds of other seeds, per held-out split and over
all held-out people (val + test: on a world the adapters were not trained on, neither split was used for anything),
from `benchmarks/answers.py` reports (the demo's `answers.json` first, then one per other world).

    python benchmarks/seed_gap.py [--out benchmarks/results/seed_gap.json] [answers.json answers_seed1.json ...]

Without reports it reads benchmarks/results/answers.json and every answers_seed*.json beside it. Beside a report
answers_X.json, unseen_people_X.json (`benchmarks/unseen_people.py` on the same world) adds the world's
all_people column: the mean over every person of the world in galleries of its test split's size, its gap taken to
the first world's test split. Where the reports carry the caption oracle (`answers.caption_oracle`: the text Rank-1
of a perfect reader of the captions, on the same galleries) it joins as two more rows: the oracle's figure and the
re-ranked text Rank-1 above it, gapped like the rest.

    python benchmarks/seed_gap.py --versus unseen_people_upper_type [--out FILE]

compares another answers adapter's unseen_people reports (NAME_seedN.json, the same worlds and adapter) with the
shipped adapter's unseen_people_seedN.json: the same galleries, so each figure's difference is paired.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
# (task, metric, its query count) of a re-ranked search in an answers report
METRICS = {"text R1": ("t2i", "R1", "queries"), "composed R@1": ("composed", "R@1", "queries"),
           "exact R@10": ("composed", "exact_R@10", "exact_queries")}
SPLITS = ("val", "test")
# what captions alone allow (answers.caption_oracle), and the re-ranked text Rank-1 above it: a world whose people the
# captions tell apart less well gaps on text Rank-1 without the engine reading it any worse
ORACLE, ABOVE = "caption oracle R1", "text R1 − oracle"
# a world's figures: each split, both pooled, and (where measured) every person of a world nobody trained on
COLUMNS = (*SPLITS, "held_out", "all_people")


def figures(report: dict, answers: str = "mllm") -> dict[str, dict[str, float]]:
    """{metric: {val, test, held_out}}: the re-ranked searches at the report's answer weight, held_out pooling the two
    splits by their query counts."""
    weight = str(report["answer_weight"])
    out = {}
    for name, (task, metric, count) in METRICS.items():
        runs = [report["rerank"][split][answers][weight][task] for split in SPLITS]
        row = {split: run[metric] for split, run in zip(SPLITS, runs)}
        row["held_out"] = sum(run[metric] * run[count] for run in runs) / sum(run[count] for run in runs)
        out[name] = row
    return out


def gaps(paths: list[Path]) -> dict:
    """Each world's figures (the MLLM's answers and true answers), its gaps to the first world's (all_people: to its
    test split), and the mean gap over the other worlds that have the column."""
    worlds, unseen_reports = {}, []
    for path in paths:
        report = json.loads(path.read_text())
        world = worlds[path.stem] = {"mllm": figures(report), "truth": figures(report, "truth")}
        unseen_path, unseen = path.with_name(path.name.replace("answers", "unseen_people", 1)), None
        if unseen_path != path and unseen_path.is_file():
            unseen = json.loads(unseen_path.read_text())
            unseen_reports.append(unseen)
            for source in ("mllm", "truth"):
                for name, row in world[source].items():
                    row["all_people"] = unseen["summary"][source][name]["mean"]
        with_oracle(world, report, unseen)
    first, *others = worlds.values()
    for world in worlds.values():
        world["gap"] = {name: {k: v - first["mllm"][name]["test" if k == "all_people" else k]
                               for k, v in row.items()} for name, row in world["mllm"].items() if name in first["mllm"]}
    mean_gap = {}
    for name in first["gap"]:
        mean_gap[name] = {}
        for k in COLUMNS:
            values = [w["gap"][name][k] for w in others if k in w["gap"][name]]
            if values:
                mean_gap[name][k] = sum(values) / len(values)
    return {"reports": [p.name for p in paths], "worlds": worlds, "mean_gap": mean_gap,
            "unseen_answers": pooled_answers(unseen_reports) if unseen_reports else {}}


def with_oracle(world: dict, report: dict, unseen: dict | None) -> None:
    """Adds ORACLE (held_out pooled by the text queries) and ABOVE to both sources' figures of `world`, where its
    answers report (and its unseen_people report, for all_people) measured the caption oracle."""
    oracle = dict(report.get("caption_oracle", {}))
    if not oracle:
        return
    counts = [report["rerank"][split]["mllm"][str(report["answer_weight"])]["t2i"]["queries"] for split in SPLITS]
    oracle["held_out"] = sum(oracle[split] * n for split, n in zip(SPLITS, counts)) / sum(counts)
    if unseen and "caption_oracle" in unseen["summary"]:
        oracle["all_people"] = unseen["summary"]["caption_oracle"]["text R1"]["mean"]
    for source in ("mllm", "truth"):
        text = world[source]["text R1"]
        world[source][ORACLE] = dict(oracle)
        world[source][ABOVE] = {k: text[k] - v for k, v in oracle.items() if k in text}


def pooled_answers(reports: list[dict]) -> dict:
    """The MLLM's answers on every image of the unseen_people reports, pooled by image count: % right per question
    and view, and upper type per view and hair length."""
    images, right, cells = Counter(), defaultdict(Counter), defaultdict(Counter)
    for report in reports:
        per_view = Counter({"all": report["images"]})
        for cell, got in report["upper_type_by_view_and_hair"].items():
            per_view[cell.split()[0]] += got["images"]
            cells[cell]["right"] += got["right"] * got["images"] / 100
            cells[cell]["images"] += got["images"]
        images.update(per_view)
        for key, row in report["answer_accuracy"].items():
            for view, n in per_view.items():
                right[key][view] += row[view] * n / 100
    return {"images": dict(images),
            "by_question": {key: {view: 100 * r / images[view] for view, r in row.items()}
                            for key, row in right.items()},
            "upper_type_by_view_and_hair": {cell: {"right": 100 * c["right"] / c["images"], "images": c["images"]}
                                            for cell, c in sorted(cells.items())}}


def versus(other: str, results: Path = RESULTS) -> dict:
    """The MLLM-answer figures of the shipped answers adapter and another (`other`_seedN.json) on each world both
    were run on, their difference, its mean over the worlds, and each adapter's answers pooled."""
    worlds, reports = {}, {"shipped": [], "other": []}
    for path in sorted(results.glob("unseen_people_seed*.json")):
        theirs = path.with_name(path.name.replace("unseen_people", other, 1))
        if not theirs.is_file():
            continue
        pair = {"shipped": json.loads(path.read_text()), "other": json.loads(theirs.read_text())}
        for side, report in pair.items():
            reports[side].append(report)
        worlds[path.stem] = {name: {side: pair[side]["summary"]["mllm"][name]["mean"] for side in pair}
                             for name in METRICS}
        for row in worlds[path.stem].values():
            row["difference"] = row["other"] - row["shipped"]
    if not worlds:
        raise SystemExit(f"no {other}_seedN.json beside an unseen_people_seedN.json in {results}")
    mean = {name: sum(w[name]["difference"] for w in worlds.values()) / len(worlds) for name in METRICS}
    return {"other": other, "worlds": worlds, "mean_difference": mean,
            "answers": {side: pooled_answers(got) for side, got in reports.items()}}


def _answers_line(pooled: dict) -> str:
    return (f"% right on {pooled['images']['all']} unseen images (front / back / side): " +
            ", ".join(f"{key} {row['all']:.1f} ({row['front']:.1f} / {row['back']:.1f} / {row['side']:.1f})"
                      for key, row in pooled["by_question"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/seed_gap.json (seed_gap_NAME.json)")
    ap.add_argument("--versus", metavar="NAME", help="compare NAME_seedN.json with unseen_people_seedN.json")
    args = ap.parse_args()
    if args.versus:
        result = versus(args.versus)
        for world, row in result["worlds"].items():
            print(world + ": " + ", ".join(f"{name} {r['shipped']:.1f} → {r['other']:.1f}" for name, r in row.items()))
        print("mean difference: " + ", ".join(f"{n} {d:+.1f}" for n, d in result["mean_difference"].items()))
        for side, pooled in result["answers"].items():
            print(f"{side} adapter's answers, {_answers_line(pooled)}")
        out = args.out or RESULTS / f"seed_gap_{args.versus}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"→ {out}")
        return
    result = gaps(args.reports or [RESULTS / "answers.json", *sorted(RESULTS.glob("answers_seed*.json"))])
    table = Table(title="re-ranked search, MLLM answers (gap to the first world; true answers)")
    for column in ("world", "metric", *COLUMNS):
        table.add_column(column, justify="left" if column in ("world", "metric") else "right")
    for world, data in result["worlds"].items():
        for name, row in ((n, r) for n, r in data["mllm"].items() if n in data["gap"]):
            table.add_row(world, name, *(f"{row[k]:.1f} ({data['gap'][name][k]:+.1f}; {data['truth'][name][k]:.1f})"
                                         if k in row else "" for k in COLUMNS))
    for name, row in result["mean_gap"].items():
        table.add_row("mean gap", name, *(f"{row[k]:+.1f}" if k in row else "" for k in COLUMNS))
    Console(width=120, color_system=None).print(table)
    if result["unseen_answers"]:
        print(f"answers, {_answers_line(result['unseen_answers'])}")
    out = args.out or RESULTS / "seed_gap.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"→ {out}")


if __name__ == "__main__":
    main()
