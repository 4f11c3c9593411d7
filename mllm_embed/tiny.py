"""An offline base model: a locally trained tokenizer plus a tiny MLLM built from config.

Nothing can be downloaded here, so `build_tiny_base` writes a folder that loads exactly like a hub
checkpoint (`AutoProcessor` / `AutoModelForImageTextToText`): a byte-level BPE tokenizer trained on the
given texts (a world's) with ChatML special tokens and a chat template, a vision tower + Qwen2 language model
joined by a two-layer projector, and a PIL-backend CLIP image processor (no torchvision needed). The tower is
either a CLIP ViT (`llava`) or a ResNet whose last feature map is read cell by cell (`fast_vlm`, FastVLM's
layout with a transformers ResNet in place of its timm FastViTHD): trained from scratch, the convolutional
tower learns garment shapes, bags and hats that the ViT does not (`benchmarks/tower_probe.py`).
The weights are random: generative pre-training ("stage 0") lives in `finetune.stage0`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mllm_embed.config import EmbedderConfig
from mllm_embed.errors import LineupError

logger = logging.getLogger(__name__)

# bases trained once and shipped with the package (`lineup demo` copies one instead of bootstrapping);
# each folder's lineup_base.json says which command rebuilt it
SHIPPED_BASES = Path(__file__).parent / "bases"

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySize:
    """Shape of one preset: input image (height x width), vision tower, language model, vocabulary.

    `patch_size` is the pixels per image token: a ViT's patch, or a ResNet's total stride (4 for its stem, x2 per
    stage after the first). A ResNet's stages widen to `vision_hidden` (h/4, h/2, h) with `vision_layers` basic
    blocks spread over them (at least one each); `vision_heads` is a ViT's only."""

    image_height: int
    image_width: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    vocab_size: int
    tower: str = "vit"


TOWERS = ("vit", "resnet")

SIZES: dict[str, TinySize] = {
    # the test fixture: stage 0 in about a minute on one core
    "test": TinySize(64, 64, 16, 64, 2, 2, 128, 2, 4, 2, 1024),
    # the demo default (`lineup bootstrap`): the person's 2:1 aspect at 128x64, a ResNet of stride 16: 32 image tokens
    "tiny": TinySize(128, 64, 16, 192, 3, 4, 192, 2, 6, 2, 2048, tower="resnet"),
    "small": TinySize(128, 64, 8, 192, 4, 6, 256, 4, 8, 4, 3072, tower="resnet"),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer with ChatML special tokens, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens={"image_token": IMAGE_TOKEN})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def vision_config(shape: TinySize):
    """The tower's transformers config: a CLIP ViT, or a basic-block ResNet of total stride `patch_size`."""
    from transformers import CLIPVisionConfig, ResNetConfig

    if shape.tower == "vit":
        # a square grid of position embeddings, interpolated to the input's height x width grid
        # (`LlavaFamily.prepare`)
        return CLIPVisionConfig(hidden_size=shape.vision_hidden, intermediate_size=4 * shape.vision_hidden,
                                num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
                                image_size=max(shape.image_height, shape.image_width), patch_size=shape.patch_size,
                                projection_dim=0)
    stages = shape.patch_size.bit_length() - 2  # stride 4 from the stem, then x2 per stage after the first
    if stages < 1 or shape.patch_size != 2 ** (stages + 1):
        raise LineupError(f"patch_size={shape.patch_size}: a ResNet tower's stride is 4, 8, 16 or 32")
    widths = [shape.vision_hidden >> (stages - 1 - i) for i in range(stages)]
    depths = [max(1, shape.vision_layers // stages + (i >= stages - shape.vision_layers % stages)) for i in range(stages)]
    # FastVLM's projector reads the tower's width from `hidden_size`
    return ResNetConfig(embedding_size=max(8, 2 * widths[0] // 3), hidden_sizes=widths, depths=depths,
                        layer_type="basic", hidden_act="relu", downsample_in_first_stage=False,
                        hidden_size=shape.vision_hidden)


def build_tiny_base(texts: Iterable[str], out_dir: str | Path, size: str = "tiny", seed: int = 0,
                    tower: str | None = None) -> Path:
    """Train a tokenizer on `texts` (a world's: `finetune.data.world.world_texts`), build a tiny MLLM from
    config (the size's tower unless `tower` names one of `TOWERS`) and `save_pretrained` all into `out_dir`."""
    import torch
    from transformers import (CLIPImageProcessorPil, FastVlmConfig, FastVlmForConditionalGeneration, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config)

    if size not in SIZES:
        raise LineupError(f"size={size!r}: unknown tiny base size; choose one of {sorted(SIZES)}")
    if tower is not None and tower not in TOWERS:
        raise LineupError(f"tower={tower!r}: unknown vision tower; choose one of {list(TOWERS)}")
    shape = replace(SIZES[size], tower=tower or SIZES[size].tower)
    if isinstance(texts, (str, Path)):
        raise LineupError(f"build_tiny_base({str(texts)!r}): pass the tokenizer's texts, e.g. a world's "
                          "(finetune.data.world.world_texts)")
    texts = list(texts) + list(EmbedderConfig().prompt_texts())
    if not texts:
        raise LineupError("build_tiny_base: no texts to train the tokenizer on")
    vision = vision_config(shape)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(texts, shape.vocab_size)
    image_processor = CLIPImageProcessorPil(
        size={"height": shape.image_height, "width": shape.image_width}, do_center_crop=False,
        crop_size={"height": shape.image_height, "width": shape.image_width},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    vit = shape.tower == "vit"
    strategy = "default" if vit else "full"  # a ViT's first token is its CLS, dropped; a feature map has none
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=shape.patch_size, vision_feature_select_strategy=strategy,
                               num_additional_image_tokens=int(vit), chat_template=CHAT_TEMPLATE)
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=shape.text_hidden,
                       intermediate_size=int(8 / 3 * shape.text_hidden) // 32 * 32,
                       num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
                       num_key_value_heads=shape.text_kv_heads, max_position_embeddings=512,
                       tie_word_embeddings=True, bos_token_id=None,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config_cls, model_cls = ((LlavaConfig, LlavaForConditionalGeneration) if vit
                             else (FastVlmConfig, FastVlmForConditionalGeneration))
    config = config_cls(vision_config=vision, text_config=text,
                        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_layer=-1,
                        vision_feature_select_strategy=strategy,
                        projector_hidden_act="gelu", tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    info = {"build_id": uuid.uuid4().hex, "size": size, "shape": asdict(shape), "seed": seed,
            "corpus_texts": len(texts)}
    (out_dir / "lineup_base.json").write_text(json.dumps(info, indent=2))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("tiny base %s (%s tower): %.2fM parameters, vocab %d -> %s", size, shape.tower, n_params / 1e6,
                len(tokenizer), out_dir)
    return out_dir
