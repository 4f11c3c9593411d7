"""MLLMEmbedder: one instruction MLLM embeds images, text and image+modification into one space.

One forward pass per input, E5-V prompts, last-token pooling of the final hidden state (or the mean over the
input's own tokens, `EmbedderConfig.pooling`), L2-normalised float32 output. The same code builds the inputs for
inference (`encode_*`), contrastive training (`batch` / `embed`), token-level training (`hidden_states`) and
generative training (`lm_batch`).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from mllm_embed.config import IMAGE_MARKER, EmbedderConfig, resolve_dtype
from mllm_embed.errors import LineupError
from mllm_embed.families import Family, family_for
from mllm_embed.files import check_adapter_folder, check_model_source, check_model_weights

logger = logging.getLogger(__name__)

Progress = Callable[[int], None] | None

# token kinds returned with every batch (NAM needs to tell image patches from caption words)
PAD, PROMPT, IMAGE, TEXT = 0, 1, 2, 3
_SLOT = "\x00slot\x00"
_IMAGE = "\x00image\x00"
_EXTRA_KEYS = ("token_kinds", "word_ids")
# inside a base folder: the adapter `MLLMEmbedder.answer` generates with (`finetune.answers`, `lineup bootstrap`)
ANSWERS_DIR = "answers"
# inside ANSWERS_DIR: the questions the adapter reads from the head view, and that view's size
HEAD_VIEW_FILE = "head_view.json"
# the share of a pedestrian crop's height and width, from its top centre, that holds the head in every pose the
# world renders (`finetune.data.render`: a person 80-94 % of the height, centred within 7 % of the width)
HEAD_FRACTION = 0.4


def load_image(image):
    """A PIL RGB image from a PIL image or a path; unreadable files raise LineupError naming the file."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise LineupError(f"{path}: image file not found; check the path") from exc
    except Image.DecompressionBombError as exc:
        raise LineupError(f"{path}: image too large to decode safely ({exc}); resize or remove the file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise LineupError(f"{path}: cannot read image ({exc}); replace or remove the file") from exc


def side_by_side(a, b, height: int = 256):
    """Two crops (PIL images or paths) next to each other in one image, for asking the MLLM about a pair
    (`config.verify_question`); `info["pair"]` keeps what the two halves were."""
    from PIL import Image

    ims = [load_image(x) for x in (a, b)]
    ims = [im.resize((max(1, round(im.width * height / im.height)), height)) for im in ims]
    out = Image.new("RGB", (ims[0].width + ims[1].width + 8, height), (255, 255, 255))
    out.paste(ims[0], (0, 0))
    out.paste(ims[1], (ims[0].width + 8, 0))
    out.info["pair"] = (str(a), str(b))
    return out


@contextlib.contextmanager
def quiet_tied_embeddings():
    """Silence peft's note that tied input/output embeddings are not re-tied after a merge: adapters are never
    merged into a saved base here, and trained token embeddings are saved with the adapter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*tie_word_embeddings", category=UserWarning)
        yield


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each row's last real token; works for left and right padding."""
    length = attention_mask.shape[1]
    last = length - 1 - attention_mask.flip(1).long().argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]


def content_mean_pool(hidden: torch.Tensor, token_kinds: torch.Tensor) -> torch.Tensor:
    """Each row's mean hidden state over its IMAGE tokens and over its TEXT tokens (the input, not the prompt
    around it), averaged over the kinds the row has: a composed query's few modification words weigh as much as
    its many image patches."""
    means, present = [], []
    for kind in (IMAGE, TEXT):
        weights = (token_kinds == kind).to(hidden.dtype).unsqueeze(-1)
        count = weights.sum(1)
        means.append((hidden * weights).sum(1) / count.clamp(min=1))
        present.append((count > 0).to(hidden.dtype))
    return (means[0] * present[0] + means[1] * present[1]) / (present[0] + present[1]).clamp(min=1)


def base_fingerprint(model_config, path: str | Path) -> str:
    """Identity of a base: its architecture, plus the build id of a locally built base."""
    text = model_config.get_text_config()
    arch = {"model_type": model_config.model_type, "vocab": text.vocab_size, "hidden": text.hidden_size,
            "layers": text.num_hidden_layers}
    marker = Path(path) / "lineup_base.json"
    if marker.exists():
        arch["build_id"] = json.loads(marker.read_text()).get("build_id", "")
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]



def train_mode(model, mode: bool = True) -> None:
    """`model.train(mode)`, except that batch norms whose weights are frozen stay in eval mode: a frozen
    convolutional tower keeps the statistics it was trained with, so it embeds an image the same way in training
    and at inference, whatever else is in the batch. Entering training also takes 4-bit layers off bitsandbytes'
    CPU inference layout (`_unpack_cpu_4bit`)."""
    model.train(mode)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()):
            module.eval()
        if mode and getattr(module, "support_avx512bf16_for_cpu", False):
            _unpack_cpu_4bit(module)


def _unpack_cpu_4bit(module) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weight for inference the first time the layer
    runs in eval mode, and its matmul on that layout adds the bias in place, which autograd refuses. Once the model
    trains, the layer goes back to the plain layout and stays there (evaluation passes during training included)."""
    from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

    module.support_avx512bf16_for_cpu = False
    state = getattr(module.weight, "quant_state", None)
    if getattr(state, "packing_format_for_cpu", False):
        module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(module.weight.data,
                                                                                             state)


class MLLMEmbedder:
    """Embeds images, texts and (image, modification) pairs; answers questions about images."""

    def __init__(self, model, family: Family, config: EmbedderConfig, adapter: str | None = None,
                 base: str | None = None):
        self.model = model
        self.adapter = adapter  # the adapter folder loaded on the base (collections record its content hash)
        self.base = base  # the base model folder or hub name it was loaded from
        self.family = family
        self.processor = family.processor
        self.tokenizer = family.tokenizer
        self.config = config
        self.dim = model.config.get_text_config().hidden_size
        self._pieces: dict[str, list[int]] = {}
        self.merged_sources: list[Path] = []  # adapters folded into the base weights (mllm_embed.merge)
        # loads the base with its answers adapter (set by load_embedder when the base folder has one); called once
        self.answerer_loader: Callable[[], torch.nn.Module] | None = None
        self._answerer: torch.nn.Module | None = None
        # questions the answers adapter was trained to read from `head_view(image, head_fraction)` (HEAD_VIEW_FILE)
        self.head_questions: frozenset[str] = frozenset()
        self.head_fraction = HEAD_FRACTION

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------- building inputs
    def _prompt(self, template: str, system: str = "", suffix: str = "") -> str:
        """Fill the chat template (with an optional system turn) around a user prompt, keeping the image and slot
        as sentinels; `suffix` follows the templated text (GME's "<|endoftext|>")."""
        content = self.config.common_prompt + template.replace(IMAGE_MARKER, _IMAGE)
        for slot in ("{text}", "{modification}", "{question}"):
            content = content.replace(slot, _SLOT)
        if self.config.use_chat_template and self.tokenizer.chat_template:
            content = self._chat(system, content)
        return content + suffix

    def _chat(self, system: str, content: str) -> str:
        """The chat template around one user turn. Content goes in as a list of text parts, the form the hub's
        multimodal templates (LLaVA-NeXT, Idefics3, Qwen2-VL) read; a template that only takes strings gets one."""
        for wrap in (lambda text: [{"type": "text", "text": text}], lambda text: text):
            turns = ([{"role": "system", "content": wrap(system)}] if system else []) + [
                {"role": "user", "content": wrap(content)}]
            try:
                text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            except Exception:  # noqa: BLE001 — jinja errors of a template written for the other form
                continue
            if content in text:
                return text
        raise LineupError("the tokenizer's chat template drops the prompt; set use_chat_template=False "
                          "(e.g. --prompt-style vlm2vec)")

    def _encode_piece(self, text: str) -> list[int]:
        """Token ids of a literal prompt piece (cached: the same few pieces recur in every input)."""
        if text not in self._pieces:
            self._pieces[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        return self._pieces[text]

    def _slot_tokens(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of user text and, per token, the index of its word in text.split() (-1: none)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        ends = [end for _, end in spans]
        words = []
        for _, end in enc["offset_mapping"]:
            k = bisect.bisect_left(ends, end)
            words.append(k if k < len(spans) and spans[k][0] < end else -1)
        return enc["input_ids"], words

    def _tokens(self, prompt: str, slot_text: str | None, placeholder: list[int] | None):
        """input ids, token kinds and word ids (index into slot_text.split(), -1 elsewhere)."""
        ids: list[int] = []
        kinds: list[int] = []
        words: list[int] = []
        for i, part in enumerate(prompt.split(_IMAGE)):
            if i:
                ids += placeholder
                kinds += [IMAGE] * len(placeholder)
                words += [-1] * len(placeholder)
            for j, literal in enumerate(part.split(_SLOT)):
                if j:
                    slot_ids, slot_words = self._slot_tokens(slot_text)
                    ids += slot_ids
                    kinds += [TEXT] * len(slot_ids)
                    words += slot_words
                piece = self._encode_piece(literal)
                ids += piece
                kinds += [PROMPT] * len(piece)
                words += [-1] * len(piece)
        return ids, kinds, words

    def _collate(self, rows, image_tensors: dict, labels: list[list[int]] | None = None) -> dict:
        """Right-pad rows (positions of real tokens do not depend on the batch) into tensors."""
        width = max(len(r[0]) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        def padded(values, fill):
            return torch.tensor([v + [fill] * (width - len(v)) for v in values])

        out = {"input_ids": padded([r[0] for r in rows], pad),
               "attention_mask": padded([[1] * len(r[0]) for r in rows], 0),
               "token_kinds": padded([r[1] for r in rows], PAD), "word_ids": padded([r[2] for r in rows], -1)}
        if labels is not None:
            out["labels"] = padded(labels, -100)
        if image_tensors:
            out.update(image_tensors)
            out.update(self.family.token_inputs(out["input_ids"]))
        return out

    def text_batch(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Model inputs (plus `token_kinds`, `word_ids`) for text queries."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise LineupError(f"texts[{i}] is empty; every text query needs at least one word")
        prompt = self._prompt(self.config.text_prompt, self.config.text_system, self.config.suffix)
        return self._collate([self._tokens(prompt, t.strip(), None) for t in texts], {})

    def image_batch(self, images: Sequence) -> dict[str, torch.Tensor]:
        """Model inputs (plus `token_kinds`, `word_ids`) for PIL images or image paths."""
        return self._vision_batch(list(images), [None] * len(images), self.config.image_prompt,
                                  self.config.image_system)

    def composed_batch(self, pairs: Sequence[tuple]) -> dict[str, torch.Tensor]:
        """Model inputs (plus `token_kinds`, `word_ids`) for (image, modification text) pairs."""
        return self._vision_batch([pair[0] for pair in pairs], [str(pair[1]).strip() for pair in pairs],
                                  self.config.composed_prompt, self.config.composed_system)

    def _vision_batch(self, images: list, texts: list[str | None], template: str, system: str) -> dict:
        vision = self.family.images([load_image(img) for img in images])
        prompt = self._prompt(template, system, self.config.suffix)
        rows = [self._tokens(prompt, t, p) for t, p in zip(texts, vision.placeholders)]
        return self._collate(rows, vision.tensors)

    def lm_batch(self, items: Sequence[tuple]) -> dict[str, torch.Tensor]:
        """Generative training inputs for (image, question, answer) triples: labels on the answer only
        (answer None: the prompt alone, for generation)."""
        vision = self.family.images([load_image(item[0]) for item in items])
        prompt = self._prompt(self.config.vqa_prompt)
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        rows, labels = [], []
        for (_, question, answer), placeholder in zip(items, vision.placeholders):
            ids, kinds, words = self._tokens(prompt, question, placeholder)
            target = [] if answer is None else self.tokenizer(answer, add_special_tokens=False)["input_ids"] + eos
            rows.append((ids + target, kinds + [PROMPT] * len(target), words + [-1] * len(target)))
            labels.append([-100] * len(ids) + target)
        return self._collate(rows, vision.tensors, labels)

    # ---------------------------------------------------------------- forward passes
    def _backbone(self):
        """The multimodal transformer without the LM head (keeps peft's injected layers)."""
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return model.model

    def _to_device(self, batch: dict) -> dict:
        """The model's inputs on its device; floating ones (pixel values) in its dtype, since not every vision tower
        casts them itself (fast_vlm's convolutions refuse float32 pixels in a bf16 model)."""
        device, dtype = self.device, self.model.dtype
        return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
                for k, v in batch.items() if k not in _EXTRA_KEYS and k != "labels"}

    def embed(self, batch: dict) -> torch.Tensor:
        """Forward + pooling (`config.pooling`) + L2 normalisation, with grad when grad is enabled."""
        return self.embed_with_states(batch)[0]

    def embed_with_states(self, batch: dict, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`embed` plus, from the same forward, the per-token hidden states (n, L, h) of `layer` (None: none)."""
        inputs = self._to_device(batch)
        out = self._backbone()(**inputs, output_hidden_states=layer is not None)
        if self.config.pooling == "mean":
            pooled = content_mean_pool(out.last_hidden_state, batch["token_kinds"].to(self.device)).float()
        else:
            pooled = last_token_pool(out.last_hidden_state, inputs["attention_mask"]).float()
        emb = torch.nn.functional.normalize(pooled, dim=-1) if self.config.normalize else pooled
        return emb, None if layer is None else out.hidden_states[layer]

    def lm_loss(self, batch: dict) -> torch.Tensor:
        """Language-model loss of a `lm_batch`, averaged per example (a long caption and a one-word answer
        weigh the same), with grad when grad is enabled."""
        logits = self.model(**self._to_device(batch)).logits[:, :-1].float()
        labels = batch["labels"][:, 1:].to(logits.device)
        token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100,
                                                       reduction="none")
        per_example = token_loss.sum(1) / (labels != -100).sum(1).clamp(min=1)
        return per_example.mean()

    def hidden_states(self, batch: dict, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token hidden states of one layer (n, L, h) and token kinds (n, L): PAD, PROMPT, IMAGE, TEXT.
        `batch["word_ids"]` maps TEXT tokens to word indices of the slot text (str.split())."""
        return self.embed_with_states(batch, layer)[1], batch["token_kinds"].to(self.device)

    def _encode(self, make_batch: Callable[[Sequence], dict], items: Sequence, batch_size: int, progress: Progress,
                length=lambda item: 0) -> np.ndarray:
        if batch_size < 1:
            raise LineupError(f"batch_size={batch_size}: must be >= 1")
        items = list(items)
        order = sorted(range(len(items)), key=lambda i: -length(items[i]))
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        with self.inference():
            for start in range(0, len(items), batch_size):
                idx = order[start:start + batch_size]
                vectors = self.embed(make_batch([items[i] for i in idx]))
                out[idx] = vectors.cpu().numpy()
                if progress:
                    progress(len(idx))
        return out

    @contextlib.contextmanager
    def inference(self):
        """Eval mode and no grad for the block; the model's train/eval mode is restored afterwards."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            train_mode(self.model, was_training)

    def encode_text(self, texts: Sequence[str], batch_size: int = 16, progress: Progress = None) -> np.ndarray:
        """(n, dim) float32 embeddings of text queries."""
        return self._encode(self.text_batch, texts, batch_size, progress, length=lambda t: len(str(t)))

    def encode_images(self, images: Sequence, batch_size: int = 16, progress: Progress = None) -> np.ndarray:
        """(n, dim) float32 embeddings of PIL images or image paths."""
        return self._encode(self.image_batch, images, batch_size, progress)

    def encode_composed(self, pairs: Sequence[tuple], batch_size: int = 16, progress: Progress = None) -> np.ndarray:
        """(n, dim) float32 embeddings of (image, modification text) pairs."""
        return self._encode(self.composed_batch, pairs, batch_size, progress, length=lambda p: len(str(p[1])))

    def answer(self, image, question: str, max_new_tokens: int = 8, options: Sequence[str] | None = None,
               views: bool = False) -> str:
        """Greedy answer to a question about an image (lower-case, stripped). A loaded stage adapter is never
        used: it is trained for embeddings. A base folder with an answers adapter (`ANSWERS_DIR`) answers with it
        (loaded on first use, beside this model); any other base answers with its own stage-0 skills.

        `options`: the answer is one of them (decoding may only spell an option). `views`: four views of the image
        (`answer_views`) are asked together and every token is picked by their mean log-probability — for
        questions whose answer a mirror image does not change (a garment's colour, not which hand holds the bag).
        A question of `head_questions` is asked about the image's `head_view` (its views with `views`)."""
        shown = load_image(image)
        if question in self.head_questions:
            shown = head_view(shown, self.head_fraction)
        inputs = self._to_device(self.lm_batch([(view, question, None)
                                                for view in (answer_views(shown) if views else [shown])]))
        prompt_len = inputs["input_ids"].shape[1]
        processors = []
        if options or views:
            eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
            spelled = [self.tokenizer(o, add_special_tokens=False)["input_ids"] + eos for o in options or ()]
            processors = [_ViewConsensus(prompt_len, spelled)]
            max_new_tokens = max(map(len, spelled)) if spelled else max_new_tokens
        if self.answerer_loader is not None and self._answerer is None:
            self._answerer = self.answerer_loader()
        model = self._answerer if self._answerer is not None else self.model
        stage_lora = model is self.model and hasattr(model, "disable_adapter")
        with self.inference(), model.disable_adapter() if stage_lora else contextlib.nullcontext():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=self.tokenizer.pad_token_id, logits_processor=processors)
        text = self.tokenizer.decode(out[0, prompt_len:], skip_special_tokens=True)
        return text.strip().strip(".").strip().lower()

    # ---------------------------------------------------------------- adapters
    def add_adapter(self, peft_config) -> None:
        """Wrap the model with a new peft adapter (e.g. a LoraConfig) for training."""
        from peft import get_peft_model

        with quiet_tied_embeddings():
            self.model = get_peft_model(self.model, peft_config)

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the peft adapter files and lineup_embedder.json into `directory`."""
        if not hasattr(self.model, "peft_config"):
            raise LineupError("this embedder has no adapter to save; call add_adapter(LoraConfig(...)) first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        from mllm_embed.merge import store_merged

        self.config.merged_adapters = store_merged(self.merged_sources, directory)
        self.config.save(directory)
        return directory


def head_view(image, fraction: float = HEAD_FRACTION):
    """The top-centre `fraction` of a PIL image's height and width (the image's aspect kept): a pedestrian's head,
    which the model's input size then shows `1 / fraction` times larger than in the whole crop."""
    w, h = image.size
    cw, ch = max(1, round(fraction * w)), max(1, round(fraction * h))
    x0 = (w - cw) // 2
    return image.crop((x0, 0, x0 + cw, ch))


def answer_views(image) -> list:
    """A PIL image, its mirror image, and both moved by 3 % of the width and 2.5 % of the height (grey border):
    the views `MLLMEmbedder.answer(..., views=True)` asks about together."""
    from PIL import Image, ImageOps

    dx, dy = max(1, round(0.03 * image.width)), max(1, round(0.025 * image.height))
    moved = image.transform(image.size, Image.AFFINE, (1, 0, dx, 0, 1, dy), fillcolor=(128, 128, 128))
    return [image, ImageOps.mirror(image), moved, ImageOps.mirror(moved)]


class _ViewConsensus:
    """A `generate` logits processor for `MLLMEmbedder.answer`: every row of the batch (views of one image) gets
    the rows' mean log-probabilities, so all rows decode the same answer; with `options` (token ids, each ending
    in eos), only tokens that continue an option's spelling stay allowed."""

    def __init__(self, prompt_len: int, options: list[list[int]]):
        self.prompt_len, self.options = prompt_len, options

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(scores.float(), dim=-1).mean(0, keepdim=True)
        if self.options:
            done = input_ids[0, self.prompt_len:].tolist()
            allowed = sorted({o[len(done)] for o in self.options if len(o) > len(done) and o[:len(done)] == done})
            keep = torch.full_like(logp, float("-inf"))
            keep[:, allowed] = 0.0
            logp = logp + keep
        return logp.expand_as(scores).to(scores.dtype)


_QUANTIZATION = ("4bit", "8bit")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _quantization_config(quantization: str | None, dtype, family: type[Family]):
    if quantization is None:
        return None
    if quantization not in _QUANTIZATION:
        raise LineupError(f"quantization={quantization!r}: unknown; choose one of {list(_QUANTIZATION)} or None")
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise LineupError(f"quantization={quantization!r} needs bitsandbytes: pip install bitsandbytes") from exc
    # transformers matches skip names from the start of the module path (or as a suffix): "vision_tower" alone
    # would not keep "model.vision_tower.encoder…" out of 4-bit
    skip = [rf".*{name}" for name in family.skip_quantization]
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                  llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def load_embedder(name_or_path: str | Path, adapter: str | Path | None = None, device: str | None = None,
                  dtype=None, quantization: str | None = None, prompt_style: str | None = None) -> MLLMEmbedder:
    """Load a base MLLM (local folder or hub name) and optionally a peft adapter saved by `save_adapter`.
    `prompt_style` picks a prompt preset (`config.PROMPT_STYLES`) for a bare base; an adapter keeps the prompts it
    was trained with, and a different preset for it is refused."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    name = str(name_or_path)
    path = Path(name)
    check_model_source(name)
    if adapter is not None:
        check_adapter_folder(adapter)
    try:
        model_config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise LineupError(f"--model {name}: cannot load model config ({_first_line(exc)}); pass a model folder or "
                          "hub name") from None
    family_cls = family_for(model_config.model_type)
    check_model_weights(name)
    torch_dtype = resolve_dtype(dtype)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    quant = _quantization_config(quantization, torch_dtype, family_cls)
    kwargs = {"dtype": torch_dtype}
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": device})
    family = family_cls(name)

    def weights():
        try:  # safetensors only: a .bin is a pickle; no code from the folder (config auto_map) runs either
            model = AutoModelForImageTextToText.from_pretrained(name, trust_remote_code=False, use_safetensors=True,
                                                                **kwargs)
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            raise LineupError(f"--model {name}: cannot load the weights ({_first_line(exc)}); the folder is "
                              "incomplete or damaged — copy or rebuild it") from None
        if quant is None:
            model.to(device)
        family.prepare(model)
        return model.eval()

    model = weights()
    fingerprint = base_fingerprint(model_config, path)
    if adapter is None:
        config = EmbedderConfig.from_style(prompt_style or "lineup", base_model=name, base_fingerprint=fingerprint)
    else:
        config = EmbedderConfig.load(adapter)
        if prompt_style and prompt_style != config.prompt_style:
            raise LineupError(f"{adapter}: adapter was trained with --prompt-style {config.prompt_style}, not "
                              f"{prompt_style}; drop --prompt-style or use --adapter none")
        if config.base_fingerprint and config.base_fingerprint != fingerprint:
            raise LineupError(f"{adapter}: adapter was trained on base {config.base_model!r}, not on {name!r}; "
                              f"load it with that base model")
        from peft import PeftModel

        from mllm_embed.merge import apply_merged

        try:
            model, merged = apply_merged(model, Path(adapter), config.merged_adapters)
            with quiet_tied_embeddings():
                model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
            raise LineupError(f"--adapter {adapter}: cannot load the adapter ({_first_line(exc)}); the folder is "
                              "incomplete or damaged — copy it again or retrain") from None
        model.eval()
    logger.info("loaded %s embedder from %s", family_cls.name, name)
    embedder = MLLMEmbedder(model, family, config, adapter=str(Path(adapter).resolve()) if adapter else None,
                            base=name)
    embedder.merged_sources = merged if adapter is not None else []
    answers = path / ANSWERS_DIR
    if (answers / "adapter_config.json").exists():
        embedder.answerer_loader = lambda: _with_adapter(weights(), answers, merge=quant is None)
        if (answers / HEAD_VIEW_FILE).exists():
            try:
                head = json.loads((answers / HEAD_VIEW_FILE).read_text())
                embedder.head_questions, embedder.head_fraction = frozenset(head["questions"]), float(head["fraction"])
            except (ValueError, KeyError, TypeError) as exc:
                raise LineupError(f"{answers / HEAD_VIEW_FILE}: unreadable ({_first_line(exc)}); rebuild the answers "
                                  "adapter with `lineup bootstrap`") from None
    return embedder


def _with_adapter(model, adapter: Path, merge: bool):
    """`model` with the peft adapter in `adapter` (folded into its weights when `merge`), for inference."""
    from peft import PeftModel

    try:
        with quiet_tied_embeddings():
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise LineupError(f"{adapter}: cannot load the base's answers adapter ({_first_line(exc)}); the folder is "
                          "incomplete or damaged — rebuild it with `lineup bootstrap`") from None
    return (model.merge_and_unload() if merge else model).eval()
