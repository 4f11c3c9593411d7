"""benchmarks/unseen_people.py: a world's people dealt into galleries keep every one-edit family together."""

from __future__ import annotations

from types import SimpleNamespace

from _env import benchmark

from finetune.data.records import Triplet
from retrieval.judge import world_vocabulary

unseen_people = benchmark("unseen_people")


def test_families_join_the_people_triplets_link_and_leave_the_rest_alone():
    records = [SimpleNamespace(person_id=p) for p in range(7)]
    triplets = [Triplet("a", "m", "b", 1, 2), Triplet("b", "m", "c", 3, 2), Triplet("c", "m", "d", 5, 4)]
    assert sorted(unseen_people.families(records, triplets)) == [[0], [1, 2, 3], [4, 5], [6]]


def test_deal_keeps_families_whole_and_fills_groups_of_about_the_size():
    fams = [[i, i + 1, i + 2] for i in range(0, 30, 3)] + [[i, i + 1] for i in range(30, 50, 2)] + [[50], [51]]
    groups = unseen_people.deal(fams, size=13)
    assert len(groups) == 4  # round(52 / 13)
    assert sorted(p for g in groups for p in g) == list(range(52))
    where = {p: i for i, g in enumerate(groups) for p in g}
    assert all(len({where[p] for p in fam}) == 1 for fam in fams)
    assert max(map(len, groups)) - min(map(len, groups)) <= 3  # no group outgrows another by more than a family


def test_summary_averages_each_figure_over_the_galleries_and_image_search_only_for_the_embedding():
    def gallery(r1: float) -> dict:
        searches = {"t2i": {"R1": r1}, "composed": {"R@1": r1 + 10, "exact_R@10": r1 + 20}}
        return {"figures": {"mllm": searches, "truth": searches, "embedding": {**searches, "i2i": {"mAP": r1 - 10}}},
                "caption_oracle": r1 + 5}

    summary = unseen_people.summary([gallery(70.0), gallery(80.0), gallery(90.0)])
    assert summary["mllm"]["text R1"] == {"mean": 80.0, "sd": 10.0, "min": 70.0, "max": 90.0}
    assert summary["truth"]["exact R@10"]["mean"] == 100.0
    assert summary["embedding"]["image mAP"]["mean"] == 70.0
    assert "image mAP" not in summary["mllm"]
    assert summary["caption_oracle"] == {"text R1": {"mean": 85.0, "sd": 10.0, "min": 75.0, "max": 95.0}}


def test_the_caption_oracle_ties_people_the_captions_cannot_tell_apart():
    man = {"gender": "male", "hair_length": "short", "hair_color": "black", "upper_type": "hoodie",
           "upper_color": "gray", "lower_type": "jeans", "lower_color": "green", "shoes_color": "blue", "bag": "none",
           "bag_color": "none", "hat": "none", "glasses": "none"}

    def image(person: int, captions: list[str], **changed) -> SimpleNamespace:
        return SimpleNamespace(person_id=person, captions=captions, attributes={**man, **changed})

    records = [image(0, ["A man in a gray hoodie and green jeans."]),
               image(1, ["A man in a blue hoodie and green jeans."], upper_color="blue"),
               image(2, [], shoes_color="white")]  # person 0 but for the shoes, which his caption leaves out
    # person 0's caption ties him with person 2 (one in two), person 1's names only him
    assert unseen_people.caption_oracle(records, world_vocabulary()) == 75.0


def test_upper_type_is_scored_per_view_and_hair_length():
    def person(image: str, hair: str, upper: str) -> SimpleNamespace:
        return SimpleNamespace(image=f"/w/images/{image}", attributes={"hair_length": hair, "upper_type": upper})

    records = [person("a.png", "long", "hoodie"), person("b.png", "long", "hoodie"), person("c.png", "short", "hoodie"),
               person("d.png", "long", "shirt")]
    answers = {"/w/images/a.png": {"upper_type": "shirt"}, "/w/images/b.png": {"upper_type": "hoodie"},
               "/w/images/c.png": {"upper_type": "hoodie"}, "/w/images/d.png": {"upper_type": "shirt"}}
    view_of = {"a.png": "side", "b.png": "side", "c.png": "side", "d.png": "front"}
    assert unseen_people.upper_type_by_view_and_hair(records, answers, view_of) == {
        "front long": {"right": 100.0, "images": 1}, "side long": {"right": 50.0, "images": 2},
        "side short": {"right": 100.0, "images": 1}}
