"""Model families behind one small registry: how to load a family and turn images into model inputs.

Everything else (prompts, tokenising text, padding, pooling) is family-independent and lives in the
embedder. A family only knows its image placeholder tokens and the tensors its vision tower takes.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

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


class FastVlmFamily(LlavaFamily):
    """FastVLM-style: a convolutional tower whose last feature map is read cell by cell (one image token per
    cell), projector, any causal LM (the offline base's ResNet). A feature map takes any input size."""

    name = "fast_vlm"
    model_types = ("fast_vlm",)

    def prepare(self, model) -> None:
        pass


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


# model_type -> processor class name; the processors that also take videos get video_processor=None when
# their video processor (torchvision) is unavailable: an image embedder never needs it
PROCESSORS = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
              "llava_next": "LlavaNextProcessor", "llava_onevision": "LlavaOnevisionProcessor",
              "idefics3": "Idefics3Processor", "smolvlm": "SmolVLMProcessor"}


def processor_class(model_type: str):
    import transformers

    if model_type not in PROCESSORS:
        raise LineupError(f"model_type={model_type!r}: no processor class known; supported: {sorted(PROCESSORS)}")
    return getattr(transformers, PROCESSORS[model_type])


def _without_video(cls):
    """`cls` accepting video_processor=None (transformers type-checks every attribute, and resolving the video
    processor class needs torchvision)."""
    if "video_processor" not in inspect.signature(cls.__init__).parameters:
        return cls

    class NoVideo(cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None and "video" in argument_name:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    NoVideo.__name__ = cls.__name__
    return NoVideo


def _processor_without_video(path: str):
    """The family's processor from its saved tokenizer and PIL image processor, without the video processor
    (which needs torchvision). Fails with the install hint when no PIL image processor exists."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    model_type = AutoConfig.from_pretrained(path, trust_remote_code=False).model_type
    try:
        image_processor = AutoImageProcessor.from_pretrained(path, backend="pil", trust_remote_code=False)
    except (ImportError, ValueError) as exc:
        raise LineupError(f"{path}: the {model_type} image processor needs torchvision ({exc}); "
                          "pip install torchvision matching your torch") from exc
    cls = _without_video(processor_class(model_type))
    from transformers.utils import cached_file

    # the processor's own settings (patch size, image tokens per tile, …): a local folder or the hub cache
    saved = cached_file(path, "processor_config.json", _raise_exceptions_for_missing_entries=False)
    kwargs = json.loads(Path(saved).read_text()) if saved else {}
    kwargs = {k: v for k, v in kwargs.items() if k not in ("processor_class", "image_processor", "video_processor")}
    if "video_processor" in inspect.signature(cls.__init__).parameters:
        kwargs["video_processor"] = None
    return cls(image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(path, trust_remote_code=False),
               **kwargs)


class ProcessorFamily(Family):
    """Families whose image tokens depend on the image (tiling, any-resolution, pixel shuffle): the real
    processor expands one image marker per image and the expansion is taken as that image's placeholder
    tokens, so token counts always match what the model computes (LLaVA-NeXT, LLaVA-OneVision,
    Idefics3 / SmolVLM)."""

    marker = "<image>"
    nested_images = False  # Idefics3 / SmolVLM take one list of images per text

    def __init__(self, path: str):
        try:
            super().__init__(path)
        except (ImportError, ValueError, OSError, TypeError) as exc:
            logger.info("%s processor unavailable (%s); building it without a video processor", self.name, exc)
            self.processor = _processor_without_video(path)
            self.tokenizer = self.processor.tokenizer
            self.image_processor = self.processor.image_processor

    def images(self, images):
        out = self.processor(text=[self.marker] * len(images), images=[[im] for im in images]
                             if self.nested_images else images, return_tensors="pt", padding=True)
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(out["input_ids"], out["attention_mask"])]
        bos = self.tokenizer.bos_token_id
        rows = [r[1:] if bos is not None and r and r[0] == bos else r for r in rows]
        tensors = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        return ImageInputs(tensors, rows)


class LlavaNextFamily(ProcessorFamily):
    """LLaVA-NeXT / LLaVA-1.6 (E5-V's llama3-llava-next-8b, VLM2Vec, UniME): any-resolution tiles."""

    name = "llava_next"
    model_types = ("llava_next",)
    skip_quantization = ("vision_tower", "multi_modal_projector", "image_newline", "lm_head")


class LlavaOnevisionFamily(ProcessorFamily):
    """LLaVA-OneVision (UniME): SigLIP tower, any-resolution tiles, Qwen2 language model."""

    name = "llava_onevision"
    model_types = ("llava_onevision",)
    skip_quantization = ("vision_tower", "multi_modal_projector", "image_newline", "lm_head")


class Idefics3Family(ProcessorFamily):
    """Idefics3 / SmolVLM: SigLIP tower, pixel-shuffle connector, Llama language model."""

    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    skip_quantization = ("vision_model", "connector", "lm_head")
    nested_images = True


FAMILIES: dict[str, type[Family]] = {f.name: f for f in (LlavaFamily, FastVlmFamily, Qwen2VLFamily, LlavaNextFamily,
                                                          LlavaOnevisionFamily, Idefics3Family)}


def family_for(model_type: str) -> type[Family]:
    """The family class serving a `config.json` model_type; an unknown one lists the supported ones."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    valid = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise LineupError(f"model_type={model_type!r} is not a supported family; supported: {valid}")


def list_families() -> list[str]:
    return sorted(FAMILIES)
