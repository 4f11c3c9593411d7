"""retrieval.metrics against small hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from mllm_embed.errors import LineupError
from retrieval.metrics import rank_metrics, recall_at_k, roc_auc, verification_metrics

GALLERY_PIDS = np.array([1, 2, 1, 3, 1])
SIM = np.array([
    [0.9, 0.8, 0.7, 0.6, 0.5],  # query pid 1
    [0.1, 0.2, 0.9, 0.3, 0.4],  # query pid 2
])


def test_rank_metrics_without_cameras():
    # q0 (pid 1): ranking 0,1,2,3,4 -> pids 1,2,1,3,1 -> hits at ranks 1,3,5
    #   AP = (1/1 + 2/3 + 3/5) / 3 = 0.755556 ; INP = 3 hits / rank 5 = 0.6 ; first hit at rank 1
    # q1 (pid 2): ranking 2,4,3,1,0 -> pids 1,1,3,2,1 -> one hit at rank 4
    #   AP = 1/4 ; INP = 1/4 ; first hit at rank 4
    # R1 = 1/2, R3 = 1/2, R5 = 2/2 ; mAP = (0.755556 + 0.25) / 2 ; mINP = (0.6 + 0.25) / 2
    m = rank_metrics(SIM, [1, 2], GALLERY_PIDS, ks=(1, 3, 5))
    assert m["R1"] == pytest.approx(50.0) and m["R3"] == pytest.approx(50.0) and m["R5"] == pytest.approx(100.0)
    assert m["mAP"] == pytest.approx(100 * (1 + 2 / 3 + 3 / 5 + 0.75) / 6)
    assert m["mINP"] == pytest.approx(42.5)
    assert (m["queries"], m["skipped"]) == (2, 0)


def test_rank_metrics_excludes_same_person_same_camera_and_skips_queries_without_match():
    gallery_cams = [1, 2, 2, 1, 1]
    sim = np.vstack([SIM, [0.5, 0.5, 0.5, 0.9, 0.5]])
    # q0 (pid 1, cam 1): gallery 0 and 4 are pid 1 seen by cam 1 -> removed; ranking 1,2,3 -> pids 2,1,3
    #   hit at rank 2: AP = 1/2, INP = 1/2, R1 miss
    # q1 (pid 2, cam 1): its only match (gallery 1) is cam 2 -> kept; as before AP = INP = 1/4
    # q2 (pid 3, cam 1): its only match (gallery 3) is cam 1 -> removed -> skipped
    # mAP = mINP = (0.5 + 0.25) / 2 = 37.5 ; R1 = 0 ; R5 = 100
    m = rank_metrics(sim, [1, 2, 3], GALLERY_PIDS, [1, 1, 1], gallery_cams, ks=(1, 5))
    assert m == pytest.approx({"R1": 0.0, "R5": 100.0, "mAP": 37.5, "mINP": 37.5, "queries": 2, "skipped": 1})
    # a perfect ranking scores 100 everywhere
    perfect = rank_metrics(np.eye(3), [0, 1, 2], [0, 1, 2])
    assert perfect == pytest.approx({"R1": 100, "R5": 100, "R10": 100, "mAP": 100, "mINP": 100, "queries": 3,
                                     "skipped": 0})


def test_rank_metrics_errors():
    with pytest.raises(LineupError, match="no query"):
        rank_metrics(np.ones((1, 2)), [5], [1, 2])
    with pytest.raises(ValueError, match="shape"):
        rank_metrics(np.ones((2, 3)), [1, 2], [1, 2])
    with pytest.raises(ValueError, match="both"):
        rank_metrics(SIM, [1, 2], GALLERY_PIDS, query_cams=[1, 1])


def test_recall_at_k():
    sim = np.array([
        [0.1, 0.9, 0.3, 0.2],  # target 1 is best -> rank 1
        [0.8, 0.1, 0.7, 0.6],  # target 3: 0.8, 0.7 ahead -> rank 3
        [0.5, 0.4, 0.3, 0.9],  # target 1: 0.9, 0.5 ahead -> rank 3
    ])
    # R@1 = 1/3, R@2 = 1/3, R@3 = 3/3
    r = recall_at_k(sim, [1, 3, 1], ks=(1, 2, 3))
    assert r == pytest.approx({"R@1": 100 / 3, "R@2": 100 / 3, "R@3": 100.0})
    # ties keep gallery order: target 1 ties with item 0, which comes first -> rank 2
    assert recall_at_k(np.array([[0.5, 0.5, 0.1]]), [1], ks=(1, 2)) == {"R@1": 0.0, "R@2": 100.0}
    with pytest.raises(ValueError, match="outside"):
        recall_at_k(sim, [1, 3, 4])


def test_verification_metrics():
    # threshold 0.5: predictions 1,1,0,0,1 against labels 1,0,1,0,0
    # tp = 1 (item 0), fp = 2 (items 1, 4), fn = 1 (item 2), tn = 1 (item 3)
    # accuracy = 2/5, precision = 1/3, recall = 1/2, f1 = 2 * (1/6) / (5/6) = 0.4
    m = verification_metrics([0.9, 0.8, 0.4, 0.3, 0.6], [1, 0, 1, 0, 0], threshold=0.5)
    assert m == pytest.approx({"accuracy": 0.4, "precision": 1 / 3, "recall": 0.5, "f1": 0.4})
    # nothing predicted positive: precision and f1 are 0, not NaN
    m = verification_metrics([0.1, 0.2], [1, 0], threshold=0.5)
    assert m == pytest.approx({"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0})


def test_roc_auc_hand_cases_and_ties():
    # positives 0.9, 0.4 vs negatives 0.8, 0.3, 0.6: 0.9 beats 3, 0.4 beats 1 -> 4 / 6
    assert roc_auc([0.9, 0.8, 0.4, 0.3, 0.6], [1, 0, 1, 0, 0]) == pytest.approx(4 / 6)
    # positives 0.5, 0.8 vs negatives 0.5, 0.2: (0.5 vs 0.5) tie = 1/2, other three pairs won -> 3.5 / 4
    assert roc_auc([0.5, 0.5, 0.2, 0.8], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert roc_auc([1, 2, 3], [0, 0, 1]) == 1.0 and roc_auc([1, 2, 3], [1, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="positive"):
        roc_auc([0.1, 0.2], [0, 0])


def test_roc_auc_equals_pair_counting_with_many_ties():
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 60).astype(float), rng.integers(0, 2, 60)
    pos, neg = s[y == 1], s[y == 0]
    brute = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
    assert roc_auc(s, y) == pytest.approx(brute)
