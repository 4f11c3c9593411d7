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


class _ColourEmbedder:
    """A hand-built stand-in for MLLMEmbedder's training hooks: image patches carry the person's colour
    directions, caption tokens carry their word's direction ("red" token ≈ red patch), so the pipeline
    (token kinds → word ids → r = 1 − max cos → calibration → AUC) can be checked with a known answer."""

    COLOURS = ["red", "blue", "green", "black", "white", "yellow"]

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.vocab: dict[str, torch.Tensor] = {}
        self.g = g
        self.model = torch.nn.Linear(1, 1)

    def _vec(self, word):
        if word not in self.vocab:
            self.vocab[word] = torch.randn(16, generator=self.g)
        return self.vocab[word]

    def composed_batch(self, items):
        from mllm_embed.embedder import IMAGE, PROMPT, TEXT

        rows = []
        for image_colours, caption in items:
            words = caption.split()
            kinds = [PROMPT] + [IMAGE] * len(image_colours) + [PROMPT] + [TEXT] * len(words)
            word_ids = [-1] * (2 + len(image_colours)) + list(range(len(words)))
            states = ([self._vec("<p>")] + [self._vec(c) + 0.3 * self._vec("<img>") for c in image_colours]
                      + [self._vec("<p>")] + [self._vec(w) for w in words])
            rows.append((kinds, word_ids, states))
        width = max(len(r[0]) for r in rows)
        pad = lambda v, fill: v + [fill] * (width - len(v))  # noqa: E731
        return {"token_kinds": torch.tensor([pad(r[0], 0) for r in rows]),
                "word_ids": torch.tensor([pad(r[1], -1) for r in rows]),
                "states": torch.stack([torch.stack(pad(r[2], torch.zeros(16))) for r in rows])}

    def hidden_states(self, batch, layer=-1):
        return batch["states"], batch["token_kinds"]

    def inference(self):
        return torch.no_grad()


def test_estimated_word_noise_finds_wrong_colour_words():
    from finetune.nam import estimate_word_noise, noise_auc

    rng = np.random.default_rng(0)
    emb, colours = _ColourEmbedder(), _ColourEmbedder.COLOURS
    pairs, wrong = [], []
    for _ in range(40):
        top, bottom = rng.choice(colours, 2, replace=False)
        said_top = top if rng.random() < 0.5 else rng.choice([c for c in colours if c not in (top, bottom)])
        caption = f"a person in a {said_top} shirt and {bottom} trousers"
        pairs.append(((top, bottom), caption))
        wrong.append([4] if said_top != top else [])
    scores = estimate_word_noise(emb, pairs, joint=True, center=False, batch_size=8)
    assert [len(s) for s in scores] == [len(c.split()) for _, c in pairs]
    assert noise_auc(calibrate([c for _, c in pairs], scores), wrong) > 0.95
    # uncalibrated, filler words ("a", "in") also look unlike any patch: the wrong colour is still the
    # noisiest colour word of its caption
    for s, w in zip(scores, wrong):
        if w:
            assert s[4] > s[7]


def test_nam_and_the_word_patch_loss_see_the_same_words():
    """Both split captions with `finetune.data.text.words`: "shirt." / "Shirt," / "shirt" are one word for NAM's
    calibration (word i of caption a is compared with the other occurrences of its word) and for the word–patch
    loss's positives (word i of caption a is positive for image b when b's text uses that word)."""
    from finetune.data.text import words
    from finetune.losses import caption_word_positives

    captions = ["A red shirt.", "a red SHIRT, blue shoes", "Red shoes; no shirt!", "the (blue) bag"]
    split = [words(c) for c in captions]
    assert split[0] == ["a", "red", "shirt"] and split[3] == ["the", "blue", "bag"]
    width = max(map(len, split))
    word_ids = torch.tensor([list(range(len(ws))) + [-1] * (width - len(ws)) for ws in split])
    positives = caption_word_positives(captions, word_ids)
    for a, ws in enumerate(split):
        for i in range(len(ws)):
            impulse = [np.zeros(len(w)) for w in split]
            impulse[a][i] = 1.0  # NAM: only occurrences of the same word move when this one does
            calibrated = calibrate(captions, impulse)
            for b in range(len(captions)):
                if b == a:
                    continue
                nam_same = bool(np.any(calibrated[b] != 0))
                assert nam_same == bool(positives[a, i, b]), (captions[a], ws[i], captions[b])
    assert positives[0, 2].tolist() == [True, True, True, False]  # "shirt." is the shirt of captions 1 and 2
    cal = calibrate(captions[:3], [np.array([0, 0, 1.0]), np.array([0, 0, 0.0, 0, 0]), np.array([0, 0, 0, 0.5])])
    assert cal[0][2] == pytest.approx(0.5) and cal[1][2] == pytest.approx(-0.5)  # one mean over all three
