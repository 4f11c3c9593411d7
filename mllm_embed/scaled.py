"""Scaled-down checkpoints of the families published MLLM embedders are built on, with random weights.

`build_scaled(family, texts, out_dir)` writes a folder that loads exactly like the family's hub checkpoint
(`AutoConfig` → model_type, `AutoModelForImageTextToText`, the family's processor classes): the real config
class at tiny widths, the family's PIL image processor (no torchvision), a tokenizer trained locally with the
family's special tokens (`mllm_embed.tiny.train_tokenizer`) and a ChatML chat template. Nothing is downloaded.
It proves the code path a real checkpoint takes (`--model FOLDER`), not quality.

Phi-3.5-V (VLM2Vec, UniME) is not here: transformers has no native class for it (the hub checkpoint needs
`trust_remote_code`, which Lineup does not enable).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path

from mllm_embed.errors import LineupError
from mllm_embed.tiny import CHAT_TEMPLATE, train_tokenizer

QWEN_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
IDEFICS_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]


def _text(tok, hidden: int = 64, **extra) -> dict:
    return dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                tie_word_embeddings=True, **extra)


def _qwen(tok, version: str):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil)

    ids = tok.convert_tokens_to_ids(QWEN_TOKENS)
    text = _text(tok, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    if version == "2.5":
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                      out_hidden_size=64, window_size=56, fullatt_block_indexes=[0])
        cls, cfg_cls = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig
    else:
        vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14)
        cls, cfg_cls = Qwen2VLForConditionalGeneration, Qwen2VLConfig
    config = cfg_cls(text_config=text, vision_config=vision, vision_start_token_id=ids[0], image_token_id=ids[1],
                     vision_end_token_id=ids[2], video_token_id=ids[3], tie_word_embeddings=True)
    # 56×56 … 112×56 pixels: 4–8 patches of 28 px after the 2×2 merge
    return cls(config), Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 56)


def _llava_next(tok):
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil)

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=28, patch_size=14, projection_dim=0)
    pinpoints = [[28, 28], [56, 28], [28, 56]]
    config = LlavaNextConfig(vision_config=vision, text_config={"model_type": "qwen2", **_text(tok)},
                             image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
                             vision_feature_layer=-1, vision_feature_select_strategy="default",
                             tie_word_embeddings=True, image_seq_length=4)
    processor = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                           image_grid_pinpoints=pinpoints, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return LlavaNextForConditionalGeneration(config), processor


def _llava_onevision(tok):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessorPil, SiglipVisionConfig)

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    pinpoints = [[28, 28], [56, 28], [28, 56]]
    config = LlavaOnevisionConfig(vision_config=vision, text_config={"model_type": "qwen2", **_text(tok)},
                                  image_token_index=tok.convert_tokens_to_ids("<image>"),
                                  video_token_index=tok.convert_tokens_to_ids("<video>"),
                                  image_grid_pinpoints=pinpoints, vision_feature_layer=-1, tie_word_embeddings=True)
    processor = LlavaOnevisionImageProcessorPil(size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints,
                                                image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return LlavaOnevisionForConditionalGeneration(config), processor


def _idefics3(tok, smol: bool):
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil)

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    cfg_cls, cls, proc_cls = ((SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil) if smol else
                              (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil))
    config = cfg_cls(vision_config=vision, text_config={"model_type": "llama", **_text(tok)}, scale_factor=2,
                     image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True)
    # one 32×32 tile per image (no splitting): (32/8)² patches / 2² = 4 image tokens
    processor = proc_cls(do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return cls(config), processor


# family name → (extra special tokens, builder(tokenizer) -> (model, image processor), processor extras)
SCALED = {
    "qwen2_vl": (QWEN_TOKENS, lambda tok: _qwen(tok, "2"), {}),
    "qwen2_5_vl": (QWEN_TOKENS, lambda tok: _qwen(tok, "2.5"), {}),
    "llava_next": (["<image>"], _llava_next, {"patch_size": 14, "vision_feature_select_strategy": "default",
                                                    "num_additional_image_tokens": 1}),
    "llava_onevision": (["<image>", "<video>"], _llava_onevision, {"num_image_tokens": 4,
                                                                    "vision_feature_select_strategy": "full"}),
    "idefics3": (["<image>", *IDEFICS_TOKENS], lambda tok: _idefics3(tok, smol=False), {"image_seq_len": 4}),
    "smolvlm": (["<image>", *IDEFICS_TOKENS], lambda tok: _idefics3(tok, smol=True),
                {"image_seq_len": 4}),
}


def list_scaled() -> list[str]:
    return sorted(SCALED)


def build_scaled(family: str, texts: Iterable[str], out_dir: str | Path, seed: int = 0,
                 vocab_size: int = 600) -> Path:
    """Write a scaled-down random-weight checkpoint of `family` (see `list_scaled()`) into `out_dir`."""
    import torch

    from mllm_embed.families import PROCESSORS

    if family not in SCALED:
        raise LineupError(f"family={family!r}: no scaled-down builder; choose one of {list_scaled()}")
    tokens, build, extras = SCALED[family]
    from mllm_embed.config import EmbedderConfig

    tok = train_tokenizer(list(texts) + EmbedderConfig().prompt_texts(), vocab_size)
    tok.add_special_tokens({"additional_special_tokens": [t for t in tokens if t != "<image>"]})
    torch.manual_seed(seed)
    model, image_processor = build(tok)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    # saved as its parts (tokenizer, image processor, processor_config.json), as a processor without its video
    # processor cannot save itself; loading rebuilds it (mllm_embed.families)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    (out_dir / "processor_config.json").write_text(json.dumps(
        {"processor_class": PROCESSORS[model.config.model_type], **extras}, indent=2))
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out_dir / "lineup_base.json").write_text(json.dumps({"build_id": uuid.uuid4().hex, "family": family,
                                                                   "seed": seed}))
    return out_dir
