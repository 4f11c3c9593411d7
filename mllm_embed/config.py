"""Embedder configuration (saved next to an adapter as `lineup_embedder.json`) and the one precision map."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mllm_embed.errors import LineupError

CONFIG_NAME = "lineup_embedder.json"
IMAGE_MARKER = "<image>"  # where a prompt puts the image; each family swaps in its own placeholder tokens
POOLINGS = ("last", "mean")  # EmbedderConfig.pooling


@dataclass
class EmbedderConfig:
    """What defines an embedder artifact: prompts, pooling and the base model it belongs to.

    Prompts follow E5-V: the model is asked to compress the input into one word and the final hidden
    state of the last prompt token is the embedding (`pooling="last"`). `<image>` marks the image; `{text}`,
    `{modification}` and `{question}` are the slots for user text.
    """

    image_prompt: str = field(default="<image>\nSummarize the person in the image in one word:",
                              metadata={"help": "prompt for an image; must contain <image>"})
    text_prompt: str = field(default="{text}\nSummarize the person described in one word:",
                             metadata={"help": "prompt for a text query; must contain {text}"})
    composed_prompt: str = field(
        default="<image>\nChange: {modification}. Summarize the changed person in one word:",
        metadata={"help": "prompt for image + modification; must contain <image> and {modification}"})
    common_prompt: str = field(default="", metadata={"help": "text prepended to every embedding prompt"})
    image_system: str = field(default="", metadata={"help": "system turn for image inputs (chat template only)"})
    text_system: str = field(default="", metadata={"help": "system turn for text queries (chat template only)"})
    composed_system: str = field(default="", metadata={"help": "system turn for image + modification queries"})
    suffix: str = field(default="", metadata={"help": "text appended after every (templated) embedding prompt"})
    prompt_style: str = field(default="lineup", metadata={"help": "the preset these prompts came from (PROMPT_STYLES)"})
    vqa_prompt: str = field(default="<image>\n{question}",
                            metadata={"help": "prompt for answer(image, question); <image> and {question}"})
    caption_question: str = field(default="Describe the person.",
                                  metadata={"help": "question whose answer is a caption (stage 0)"})
    match_question: str = field(
        default="Can this text accurately describe the image? Text: {text} Answer Yes or No.",
        metadata={"help": "yes/no question: does {text} describe the image (THI auto judge, stage 0)"})
    verify_question: str = field(
        default="Are these two the same person? Answer yes or no.",
        metadata={"help": "yes/no question about two crops side by side (verification judge, stage 0)"})
    use_chat_template: bool = field(default=True,
                                    metadata={"help": "wrap prompts in the tokenizer's chat template"})
    normalize: bool = field(default=True, metadata={"help": "L2-normalise embeddings"})
    pooling: str = field(default="last", metadata={
        "help": "last: the final hidden state of the last token (E5-V; what published MLLM embedders use); "
                "mean: the mean final hidden state of the input's own tokens (image patches, user text; each kind "
                "averaged, then the kinds; not the prompt), for a small base whose last token cannot gather a "
                "whole person in few layers"})
    base_model: str = field(default="", metadata={"help": "name or path of the base model"})
    base_fingerprint: str = field(default="", metadata={"help": "architecture/identity hash of the base"})
    merged_adapters: list = field(default_factory=list, metadata={
        "help": "adapters merged into the base before this one (LamRA-style stage 2): [{path, sha256}], "
                "paths relative to the adapter folder (mllm_embed.merge)"})

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"EmbedderConfig.pooling must be one of {POOLINGS}, not {self.pooling!r}")
        required = {"image_prompt": (IMAGE_MARKER,), "text_prompt": ("{text}",),
                    "composed_prompt": (IMAGE_MARKER, "{modification}"), "vqa_prompt": (IMAGE_MARKER, "{question}"),
                    "match_question": ("{text}",)}
        for name, parts in required.items():
            missing = [p for p in parts if p not in getattr(self, name)]
            if missing:
                raise ValueError(f"EmbedderConfig.{name} must contain {missing}")

    @classmethod
    def from_style(cls, style: str, **fields_) -> EmbedderConfig:
        """The config of a prompt preset (`PROMPT_STYLES`), plus the given fields (e.g. base_model)."""
        if style not in PROMPT_STYLES:
            raise LineupError(f"prompt style {style!r}: unknown; choose one of {sorted(PROMPT_STYLES)}")
        return cls(**{**PROMPT_STYLES[style], "prompt_style": style, **fields_})

    def with_style(self, style: str) -> EmbedderConfig:
        """This config with its embedding prompts replaced by a preset's (base model and judge questions kept)."""
        keep = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _STYLE_FIELDS}
        return EmbedderConfig.from_style(style, **keep)

    def match_prompt(self, text: str) -> str:
        """`match_question` asked about `text`."""
        return self.match_question.replace("{text}", text)

    def prompt_texts(self) -> list[str]:
        """The literal prompt text (for tokenizer training)."""
        return [self.common_prompt, self.image_system, self.text_system, self.composed_system, self.suffix,
                self.image_prompt, self.text_prompt, self.composed_prompt,
                self.vqa_prompt, self.caption_question, self.match_question, self.verify_question]

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> EmbedderConfig:
        path = Path(directory) / CONFIG_NAME
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LineupError(f"{path}: cannot read embedder config ({exc}); save the adapter with "
                              "MLLMEmbedder.save_adapter") from exc
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except ValueError as exc:
            raise LineupError(f"{path}: {exc}") from None


# Prompt-and-pooling presets of published MLLM embedders (all pool the last token's final hidden state).
# Sources: E5-V (Jiang et al. 2024, github.com/kongds/E5-V: "Summary above image/sentence in one word:", composed
# "Modify this image with ..., describe modified image in one word:"); VLM2Vec / MMEB (Jiang et al. 2024,
# github.com/TIGER-AI-Lab/VLM2Vec: raw instruction text, no chat template, the MSCOCO t2i / CIRR instructions);
# GME (Zhang et al. 2024, gme_inference.py of Alibaba-NLP/gme-Qwen2-VL-2B-Instruct: the instruction as the system
# turn, "You are a helpful assistant." for candidates, "<|endoftext|>" appended); MLLMReID (Yang et al. 2024: one
# common instruction for every modality).
COMMON_INSTRUCTION = "Summarize the person in one word:"
PROMPT_STYLES: dict[str, dict] = {
    "lineup": {},  # EmbedderConfig's defaults: E5-V-style, person-specific, one prompt per modality
    "common": {"image_prompt": "<image>\n" + COMMON_INSTRUCTION, "text_prompt": "{text}\n" + COMMON_INSTRUCTION,
               "composed_prompt": "<image>\nChange: {modification}.\n" + COMMON_INSTRUCTION},
    # `lineup` with the modification before the image, for mean pooling: in a causal LM only tokens after the
    # modification can take it in, and mean pooling reads the image tokens too (on the demo, with the image first,
    # upper-colour edits never moved a query off the reference person: benchmarks/composed_edits.py)
    "modification-first": {"composed_prompt": "Change: {modification}.\n<image>\nSummarize the changed person in one "
                                              "word:"},
    "e5v": {"image_prompt": "<image>\nSummary above image in one word:",
            "text_prompt": "{text}\nSummary above sentence in one word:",
            "composed_prompt": '<image>\nModify this image with "{modification}", describe modified image in one word:'},
    "vlm2vec": {"use_chat_template": False, "image_prompt": "<image> Represent the given image.",
                "text_prompt": "Find me an everyday image that matches the given caption: {text}",
                "composed_prompt": "<image> Given an image, find a similar everyday image with the described "
                                   "changes: {modification}"},
    "gme": {"image_system": "You are a helpful assistant.",
            "text_system": "Find an image that matches the given text.",
            "composed_system": "Retrieve an image that matches the reference image changed as the text says.",
            "image_prompt": "<image>", "text_prompt": "{text}", "composed_prompt": "<image>{modification}",
            "suffix": "<|endoftext|>"},
}
_STYLE_FIELDS = {"common_prompt", "image_prompt", "text_prompt", "composed_prompt", "image_system", "text_system",
                 "composed_system", "suffix", "use_chat_template", "prompt_style"}


PRECISIONS = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
              "fp16": "float16", "float16": "float16"}


def resolve_dtype(precision=None):
    """The one place a precision string ("fp32", "bf16", "fp16", or a torch.dtype) becomes a dtype."""
    import torch

    if precision is None:
        return torch.float32
    if isinstance(precision, torch.dtype):
        return precision
    if precision not in PRECISIONS:
        raise LineupError(f"precision={precision!r}: unknown; choose one of {sorted(PRECISIONS)}")
    return getattr(torch, PRECISIONS[precision])
