"""Model families behind one small registry: how to load a family and turn images into model inputs.

Everything else (prompts, tokenising text, padding, pooling) is family-independent and lives in the
embedder. A family only knows its image placeholder tokens and the tensors its vision tower takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mllm_embed.errors import LineupError

logger = logging.getLogger(__name__)


@dataclass
class ImageInputs:
    """Vision-tower tensors for a list of images plus the placeholder token ids each image needs."""

    tensors: dict = field(default_factory=dict)
    placeholders: list[list[int]] = field(default_factory=list)


class Family:
    """Base: loads processor parts with Auto classes; subclasses say how images become tokens."""

    name = ""
    model_types: tuple[str, ...] = ()
    # modules kept in full precision when the language model is quantized
    skip_quantization: tuple[str, ...] = ("lm_head",)

    def __init__(self, path: str):
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=False)
        self.tokenizer = self.processor.tokenizer
        self.image_processor = self.processor.image_processor

    def images(self, images: list) -> ImageInputs:
        raise NotImplementedError

    def token_inputs(self, input_ids) -> dict:
        """Extra per-token tensors the model needs besides input_ids (none by default)."""
        return {}

    def prepare(self, model) -> None:
        """Adjust a freshly loaded model to the inputs this family's processor makes (nothing by default)."""


def interpolate_positions(vision_tower) -> None:
    """Make a CLIP/SigLIP tower take non-square inputs: its square grid of learnt position embeddings is
    interpolated to the input's height x width grid on every forward (what `interpolate_pos_encoding=True` does
    per call; `generate` cannot pass that flag through LLaVA, so it is set on the embedding module)."""
    embeddings = getattr(vision_tower, "vision_model", vision_tower).embeddings
    forward = type(embeddings).forward

    def interpolating(pixel_values, interpolate_pos_encoding=True, **kwargs):
        return forward(embeddings, pixel_values, interpolate_pos_encoding=True, **kwargs)

    embeddings.forward = interpolating


class LlavaFamily(Family):
    """LLaVA-style: CLIP/SigLIP vision tower, projector, any causal LM (llava-hf/*, the tiny base)."""

    name = "llava"
    model_types = ("llava",)
    skip_quantization = ("vision_tower", "multi_modal_projector", "lm_head")

    def prepare(self, model) -> None:
        size = getattr(self.image_processor, "crop_size", None) or {}
        if size.get("height") != size.get("width"):
            interpolate_positions(model.model.vision_tower)

    def images(self, images):
        out = self.image_processor(images, return_tensors="pt")
        image_id = self.processor.image_token_id
        counts = [self.processor.replace_image_token(out, i).count(self.processor.image_token)
                  for i in range(len(images))]
        return ImageInputs({"pixel_values": out["pixel_values"]}, [[image_id] * n for n in counts])


class Qwen2VLFamily(Family):
    """Qwen2-VL / Qwen2.5-VL. Its full processor needs torchvision (video processor); without it the
    tokenizer and the PIL image processor are loaded on their own, which is all an image embedder needs."""

    name = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    skip_quantization = ("visual", "lm_head")

    def __init__(self, path: str):
        try:
            super().__init__(path)
        except (ImportError, ValueError, OSError, TypeError) as exc:
            from transformers import AutoImageProcessor, AutoTokenizer

            logger.info("Qwen2-VL processor unavailable (%s); using tokenizer + image processor", exc)
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            self.image_processor = AutoImageProcessor.from_pretrained(path, backend="pil", trust_remote_code=False)

    def images(self, images):
        out = self.image_processor(images, return_tensors="pt")
        ids = self.tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"])
        merge = self.image_processor.merge_size ** 2
        counts = [int(thw.prod()) // merge for thw in out["image_grid_thw"]]
        return ImageInputs({"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]},
                           [[ids[0]] + [ids[1]] * n + [ids[2]] for n in counts])

    def token_inputs(self, input_ids) -> dict:
        # M-RoPE needs to know which positions are image patches (the processor's mm_token_type_ids)
        return {"mm_token_type_ids": (input_ids == self.tokenizer.convert_tokens_to_ids("<|image_pad|>")).int()}


FAMILIES: dict[str, type[Family]] = {f.name: f for f in (LlavaFamily, Qwen2VLFamily)}


def family_for(model_type: str) -> type[Family]:
    """The family class serving a `config.json` model_type; an unknown one lists the supported ones."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    valid = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise LineupError(f"model_type={model_type!r} is not a supported family; supported: {valid}")


def list_families() -> list[str]:
    return sorted(FAMILIES)
