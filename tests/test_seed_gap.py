"""benchmarks/seed_gap.py: a world's held-out figure pools its val and test splits by their query counts, and each
world's gap is taken to the first report's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _env import benchmark

seed_gap = benchmark("seed_gap")


def _report(path: Path, text: dict, composed: float, **extra) -> Path:
    """An answers report whose text Rank-1 per split is text[split] = (R1, queries)."""
    def run(r1, queries):
        return {"t2i": {"R1": r1, "queries": queries},
                "composed": {"R@1": composed, "queries": 10, "exact_R@10": composed, "exact_queries": 10}}
    rerank = {split: {kind: {"0.1": run(*text[split]), "0.5": run(0.0, 1)} for kind in ("mllm", "truth")}
              for split in ("val", "test")}
    path.write_text(json.dumps({"answer_weight": 0.1, "rerank": rerank, **extra}))
    return path


def _answered(cells: dict[str, tuple[float, int]]) -> dict:
    """An unseen_people report's answers: upper type right % on so many images per "view hair" cell."""
    views: dict[str, tuple[float, int]] = {}
    for cell, (right, n) in cells.items():
        r, m = views.get(cell.split()[0], (0.0, 0))
        views[cell.split()[0]] = (r + right * n / 100, m + n)
    images = sum(m for _, m in views.values())
    row = {"all": 100 * sum(r for r, _ in views.values()) / images, **{v: 100 * r / m for v, (r, m) in views.items()}}
    return {"images": images, "answer_accuracy": {"upper_type": row},
            "upper_type_by_view_and_hair": {c: {"right": r, "images": m} for c, (r, m) in cells.items()}}


def test_held_out_pools_splits_by_queries_and_gaps_are_to_the_first_world(tmp_path):
    demo = _report(tmp_path / "answers.json", {"val": (80.0, 100), "test": (80.0, 300)}, 90.0)
    other = _report(tmp_path / "answers_seed1.json", {"val": (90.0, 100), "test": (70.0, 300)}, 85.0)
    worlds = seed_gap.gaps([demo, other])["worlds"]
    text = worlds["answers_seed1"]["mllm"]["text R1"]
    assert text["held_out"] == pytest.approx(75.0)  # (90 × 100 + 70 × 300) / 400, not the splits' plain mean 80
    assert worlds["answers_seed1"]["gap"]["text R1"] == pytest.approx({"val": 10.0, "test": -10.0, "held_out": -5.0})
    assert worlds["answers_seed1"]["gap"]["composed R@1"]["held_out"] == pytest.approx(-5.0)
    assert worlds["answers"]["gap"]["text R1"]["held_out"] == 0.0


def test_the_mean_gap_leaves_the_first_world_out(tmp_path):
    demo = _report(tmp_path / "answers.json", {"val": (80.0, 100), "test": (80.0, 100)}, 90.0)
    one = _report(tmp_path / "answers_seed1.json", {"val": (70.0, 100), "test": (70.0, 100)}, 90.0)
    two = _report(tmp_path / "answers_seed2.json", {"val": (84.0, 100), "test": (84.0, 100)}, 90.0)
    assert seed_gap.gaps([demo, one, two])["mean_gap"]["text R1"] == pytest.approx(
        {"val": -3.0, "test": -3.0, "held_out": -3.0})  # (-10 + 4) / 2, not over three worlds


def test_all_people_comes_from_the_unseen_people_report_and_gaps_to_the_first_worlds_test_split(tmp_path):
    demo = _report(tmp_path / "answers.json", {"val": (70.0, 100), "test": (80.0, 100)}, 90.0)
    one = _report(tmp_path / "answers_seed1.json", {"val": (70.0, 100), "test": (70.0, 100)}, 90.0)
    two = _report(tmp_path / "answers_seed2.json", {"val": (84.0, 100), "test": (84.0, 100)}, 90.0)
    summary = {source: {name: {"mean": mean} for name, mean in (("text R1", 77.0), ("composed R@1", 88.0),
                                                                ("exact R@10", 60.0))} for source in ("mllm", "truth")}
    answered = _answered({"front short": (90.0, 10)})
    (tmp_path / "unseen_people_seed1.json").write_text(json.dumps({"summary": summary, **answered}))
    result = seed_gap.gaps([demo, one, two])
    assert result["worlds"]["answers_seed1"]["gap"]["text R1"]["all_people"] == pytest.approx(-3.0)  # 77 − test 80
    assert "all_people" not in result["worlds"]["answers_seed2"]["mllm"]["text R1"]
    assert result["mean_gap"]["text R1"]["all_people"] == pytest.approx(-3.0)  # over the one world that has it
    assert result["mean_gap"]["text R1"]["test"] == pytest.approx(-3.0)  # (−10 + 4) / 2


def test_the_caption_oracle_gaps_beside_text_rank_1_and_what_the_engine_reads_above_it(tmp_path):
    demo = _report(tmp_path / "answers.json", {"val": (80.0, 100), "test": (80.0, 300)}, 90.0,
                   caption_oracle={"val": 78.0, "test": 82.0})
    one = _report(tmp_path / "answers_seed1.json", {"val": (70.0, 100), "test": (70.0, 100)}, 90.0,
                  caption_oracle={"val": 72.0, "test": 74.0})
    summary = {source: {name: {"mean": 71.0} for name in seed_gap.METRICS} for source in ("mllm", "truth")}
    summary["caption_oracle"] = {"text R1": {"mean": 75.0}}
    answered = _answered({"front short": (90.0, 10)})
    (tmp_path / "unseen_people_seed1.json").write_text(json.dumps({"summary": summary, **answered}))
    result = seed_gap.gaps([demo, one])
    demo_row, row = (result["worlds"][w]["mllm"] for w in ("answers", "answers_seed1"))
    assert demo_row[seed_gap.ORACLE]["held_out"] == pytest.approx(81.0)  # (78 × 100 + 82 × 300) / 400
    assert row[seed_gap.ABOVE] == pytest.approx({"val": -2.0, "test": -4.0, "held_out": -3.0, "all_people": -4.0})
    gap = result["worlds"]["answers_seed1"]["gap"]
    assert gap["text R1"]["all_people"] == pytest.approx(-9.0)  # 71 − the demo's test 80
    assert gap[seed_gap.ORACLE]["all_people"] == pytest.approx(-7.0)  # the captions' own: 75 − 82
    assert gap[seed_gap.ABOVE]["all_people"] == pytest.approx(-2.0)  # −4 against the demo's −2 on its test split


def test_unseen_answers_pool_the_worlds_by_image_count_per_view():
    pooled = seed_gap.pooled_answers([_answered({"front short": (100.0, 30), "side long": (50.0, 10)}),
                                      _answered({"front short": (80.0, 10), "side long": (70.0, 30)})])
    assert pooled["images"] == {"all": 80, "front": 40, "side": 40}
    assert pooled["by_question"]["upper_type"]["front"] == pytest.approx(95.0)  # (30 + 8) / 40, not (100 + 80) / 2
    assert pooled["by_question"]["upper_type"]["all"] == pytest.approx(100 * (30 + 5 + 8 + 21) / 80)
    assert pooled["upper_type_by_view_and_hair"]["side long"] == pytest.approx({"right": 65.0, "images": 40})


def test_versus_pairs_another_adapters_unseen_reports_with_the_shipped_ones_world_by_world(tmp_path):
    def unseen(path: Path, text: float, upper: float) -> None:
        summary = {"mllm": {name: {"mean": text if name == "text R1" else 90.0} for name in seed_gap.METRICS}}
        path.write_text(json.dumps({"summary": summary, **_answered({"side short": (upper, 10)})}))

    unseen(tmp_path / "unseen_people_seed1.json", 80.0, 70.0)
    unseen(tmp_path / "unseen_people_seed2.json", 70.0, 70.0)
    unseen(tmp_path / "unseen_people_seed3.json", 60.0, 70.0)  # no other report for seed 3: left out
    unseen(tmp_path / "other_seed1.json", 77.0, 90.0)
    unseen(tmp_path / "other_seed2.json", 71.0, 80.0)
    result = seed_gap.versus("other", tmp_path)
    assert list(result["worlds"]) == ["unseen_people_seed1", "unseen_people_seed2"]
    assert result["worlds"]["unseen_people_seed1"]["text R1"] == pytest.approx(
        {"shipped": 80.0, "other": 77.0, "difference": -3.0})
    assert result["mean_difference"]["text R1"] == pytest.approx(-1.0)  # (−3 + 1) / 2
    assert result["answers"]["other"]["by_question"]["upper_type"]["side"] == pytest.approx(85.0)
    assert result["answers"]["shipped"]["images"]["all"] == 20
