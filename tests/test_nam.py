import numpy as np
import pytest
import torch

from finetune.nam import NoiseAwareMasker, calibrate, mask_caption, mask_probabilities, token_noise, word_scores


def test_token_noise_is_one_minus_best_patch_cosine():
    patches = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    text = torch.tensor([[2.0, 0, 0], [0, 0, 3.0], [1.0, 1.0, 0]])
    r = token_noise(text, patches)
    assert torch.allclose(r, torch.tensor([0.0, 1.0, 1 - 2**-0.5]), atol=1e-6)


def test_word_scores_pool_tokens_by_max_and_skip_prompt_tokens():
    scores = [0.9, 0.1, 0.4, 0.2, 0.8]
    token_words = [None, 0, 1, 1, None]  # prompt tokens first/last; word 1 split into two tokens; word 2 unseen
    assert word_scores(scores, token_words, 3) == pytest.approx([0.1, 0.4, 0.25])


def test_calibrate_compares_a_word_with_its_other_occurrences():
    captions = ["a red shirt", "a red coat", "a red hat"]
    scores = [np.array([0.5, 0.2, 0.3]), np.array([0.5, 0.8, 0.3]), np.array([0.5, 0.2, 0.3])]
    cal = calibrate(captions, scores)
    assert cal[0][0] == pytest.approx(0.0)  # "a" always scores the same: no evidence
    assert cal[1][1] == pytest.approx(0.4) and cal[0][1] == pytest.approx(-0.2)  # the odd "red" stands out


def test_mask_probabilities_keep_the_average_rate_and_favour_noisy_words():
    noise = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9])
    nam = mask_probabilities(noise, 0.15, "nam")
    uni = mask_probabilities(noise, 0.15, "uniform")
    assert nam[-1] > 0.5 and nam[0] < 0.05
    assert nam.mean() == pytest.approx(0.15, abs=0.02) and uni == pytest.approx(np.full(8, 0.15))
    assert (mask_probabilities(noise, 0.15, "none") == 0).all()
    with pytest.raises(ValueError, match="mask mode"):
        mask_probabilities(noise, 0.15, "random")


def test_mask_caption_drops_or_replaces_words_and_never_empties():
    rng = np.random.default_rng(0)
    caption = "a man in a blue shirt"
    assert mask_caption(caption, np.array([0, 0, 0, 0, 1.0, 0]), rng) == "a man in a shirt"
    assert mask_caption(caption, np.array([0, 0, 0, 0, 1.0, 0]), rng, "<mask>") == "a man in a <mask> shirt"
    assert mask_caption(caption, np.ones(6), rng) == caption


def test_masker_masks_noisy_words_more_often_at_the_same_rate():
    caption = "the woman wears a green skirt and red shoes"
    noise = np.zeros(9)
    noise[4] = 1.0  # "green" is wrong
    masker = NoiseAwareMasker(rate=0.15, mode="nam")
    masker.update([(0, 1)], [noise])
    uniform = NoiseAwareMasker(rate=0.15, mode="uniform")
    rng = np.random.default_rng(0)
    dropped_nam = sum("green" not in masker(caption, rng, (0, 1)) for _ in range(300))
    dropped_uni = sum("green" not in uniform(caption, rng, (0, 1)) for _ in range(300))
    assert dropped_nam > 150 and dropped_uni < 80
    total_nam = sum(9 - len(masker(caption, rng, (0, 1)).split()) for _ in range(300)) / (300 * 9)
    assert total_nam == pytest.approx(0.15, abs=0.04)
    # without an estimate for the key, NAM falls back to uniform masking
    assert sum("green" not in masker(caption, rng, (5, 5)) for _ in range(300)) < 80
    # the same rng state gives the same masks; the noise table survives a state_dict round trip
    other = NoiseAwareMasker(rate=0.15, mode="nam")
    other.load_state_dict(masker.state_dict())
    a = [masker(caption, np.random.default_rng(7), (0, 1)) for _ in range(3)]
    assert [other(caption, np.random.default_rng(7), (0, 1)) for _ in range(3)] == a
    assert NoiseAwareMasker(mode="none")(caption, rng) == caption
    with pytest.raises(ValueError, match="mask rate"):
        NoiseAwareMasker(rate=1.5)
