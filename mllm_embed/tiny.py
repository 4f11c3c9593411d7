"""An offline base model: a locally trained tokenizer plus a tiny LLaVA-style MLLM built from config.

Nothing can be downloaded here, so `build_tiny_base` writes a folder that loads exactly like a hub
checkpoint (`AutoProcessor` / `AutoModelForImageTextToText`): a byte-level BPE tokenizer trained on the
given texts (a world's) with ChatML special tokens and a chat template, a CLIP vision tower + Qwen2 language model
joined by the LLaVA projector, and a PIL-backend CLIP image processor (no torchvision needed).
The weights are random: generative pre-training ("stage 0") lives in `finetune.stage0`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
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
    """Shape of one preset: input image (height x width), vision tower, language model, vocabulary."""

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


SIZES: dict[str, TinySize] = {
    # the test fixture: stage 0 in about a minute on one core
    "test": TinySize(64, 64, 16, 64, 2, 2, 128, 2, 4, 2, 1024),
    # the demo default (`lineup bootstrap`): the person's 2:1 aspect at 128x64 in 16-px patches, 32 image tokens
    "tiny": TinySize(128, 64, 16, 128, 4, 4, 192, 2, 6, 2, 2048),
    "small": TinySize(128, 64, 8, 192, 4, 6, 256, 4, 8, 4, 3072),
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


def build_tiny_base(texts: Iterable[str], out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Train a tokenizer on `texts` (a world's: `finetune.data.world.world_texts`), build a tiny LLaVA model
    from config and `save_pretrained` all into `out_dir`."""
    import torch
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config)

    if size not in SIZES:
        raise LineupError(f"size={size!r}: unknown tiny base size; choose one of {sorted(SIZES)}")
    shape = SIZES[size]
    if isinstance(texts, (str, Path)):
        raise LineupError(f"build_tiny_base({str(texts)!r}): pass the tokenizer's texts, e.g. a world's "
                          "(finetune.data.world.world_texts)")
    texts = list(texts) + list(EmbedderConfig().prompt_texts())
    if not texts:
        raise LineupError("build_tiny_base: no texts to train the tokenizer on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(texts, shape.vocab_size)
    image_processor = CLIPImageProcessorPil(
        size={"height": shape.image_height, "width": shape.image_width}, do_center_crop=False,
        crop_size={"height": shape.image_height, "width": shape.image_width},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=shape.patch_size, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)

    vision = CLIPVisionConfig(hidden_size=shape.vision_hidden, intermediate_size=4 * shape.vision_hidden,
                              num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
                              # a square grid of position embeddings, interpolated to the input's
                              # height x width grid (`LlavaFamily.forward_kwargs`)
                              image_size=max(shape.image_height, shape.image_width), patch_size=shape.patch_size,
                              projection_dim=0)
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=shape.text_hidden,
                       intermediate_size=int(8 / 3 * shape.text_hidden) // 32 * 32,
                       num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
                       num_key_value_heads=shape.text_kv_heads, max_position_embeddings=512,
                       tie_word_embeddings=True, bos_token_id=None,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    info = {"build_id": uuid.uuid4().hex, "size": size, "shape": asdict(shape), "seed": seed,
            "corpus_texts": len(texts)}
    (out_dir / "lineup_base.json").write_text(json.dumps(info, indent=2))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("tiny base %s: %.2fM parameters, vocab %d -> %s", size, n_params / 1e6, len(tokenizer), out_dir)
    return out_dir
