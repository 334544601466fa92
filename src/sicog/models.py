"""The tiny LLaVA the CPU demo runs SICOG on: tokenizer, model factory, load/save, chat messages.

The architecture is the paper's (a CLIP-style vision tower whose layer -2 features go through a
projector into a Qwen2-style LM), shrunk so that a 2-core machine trains it in minutes. Everything
is a stock transformers class saved with `save_pretrained` (safetensors), so the same code loads a
real 7B LLaVA checkpoint through `AutoModelForImageTextToText` / `AutoProcessor`.

Why these choices:
- 8-pixel patches on 64-pixel images (64 image tokens): a feasibility probe showed the tiny model
  learns to use the image with 8-px patches and stays at chance with 16-px ones.
- The tokenizer is trained offline on the demo world's text (no model hub): byte-level BPE, so any
  text, newlines included, decodes back exactly.
- The chat template is ChatML (Qwen2's) with `{% generation %}` around assistant turns, so the
  trainer gets an exact assistant-only loss mask from transformers' own `return_assistant_tokens_mask`.
  `assemble_model` gives a real LM the same marks: ChatML for Qwen2, Llama 3's header format for
  Llama-3.1 (the paper's two backbones).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.utils import logging as hf_logging

from sicog import logs
from sicog.config import ModelConfig
from sicog.errors import UserError
from sicog.records import IMAGE_TOKEN

logs.adopt("transformers")  # JSON logs (the images): transformers' warnings become JSON lines too

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of every turn, and the model's eos
PAD = "<|pad|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END, IMAGE_TOKEN]
MAX_POSITIONS = 4096  # RoPE positions (no parameters); the paper's sequence length

# The content of a turn, shared by both marked templates below: an assistant turn's text items; a
# user turn's image items as "<image>\n" before its text, as in LLaVA data (the processor expands
# each "<image>" to the vision tower's patch count).
_ASSISTANT_TEXT = (
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
)
_USER_CONTENT = (
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
)

# ChatML as in Qwen2, without Qwen2's default system prompt (it would cost every demo record ~20
# tokens and teaches nothing). `{% generation %}` marks the assistant tokens that carry the loss.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}" + _ASSISTANT_TEXT + "{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}" + _USER_CONTENT + "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Llama 3's header format (Llama-3.1-8B-Instruct's template) with the same marks and image items.
# Like the ChatML twin above it leaves out the default system block (knowledge cut-off and date, ~25
# tokens per record that teach nothing) and the tool-calling branches, which LLaVA data never uses.
# It opens with bos_token as Llama's own template does, so whoever tokenizes the rendered text must
# not let the tokenizer add a second one.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}" + _ASSISTANT_TEXT + "{{- '<|eot_id|>' -}}"
    "{%- endgeneration -%}"
    "{%- else -%}" + _USER_CONTENT + "{{- '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)
LLAMA3_HEADER = "<|start_header_id|>"

# A `{% generation %}` block tag (any whitespace control). The bare word is no evidence: nearly every
# chat template says `add_generation_prompt`.
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`: every string round-trips, unseen characters included."""
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False keeps decode(encode(x)) == x (no invented leading space).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def _image_processor(image_size: int) -> CLIPImageProcessorPil:
    # Exact size, no centre crop: a world image already of this size passes through unresampled
    # (PIL returns a copy when the target size equals the source size); others are resized.
    square = {"height": image_size, "width": image_size}
    return CLIPImageProcessorPil(size=square, crop_size=square, do_center_crop=False)


def init_model(out_dir: str | Path, texts: Iterable[str], cfg: ModelConfig, image_size: int, seed: int) -> Path:
    """A randomly initialised tiny LLaVA + processor saved to `out_dir`; returns `out_dir`."""
    hf_logging.disable_progress_bar()  # sicog shows rich progress; tqdm bars would interleave with it
    if image_size % cfg.patch_size:
        raise UserError(f"image_size {image_size} is not a multiple of patch_size {cfg.patch_size}")
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.heads,
        image_size=image_size,
        patch_size=cfg.patch_size,
        num_channels=3,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.lm_hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.lm_layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=ids[IM_START],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids[IMAGE_TOKEN],
        image_seq_length=(image_size // cfg.patch_size) ** 2,
        vision_feature_layer=-2,  # LLaVA's choice: the penultimate layer's patch features
        vision_feature_select_strategy="default",  # drop CLS: (image_size / patch)^2 image tokens
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids[IM_END]
    model.generation_config.pad_token_id = ids[PAD]
    model.generation_config.bos_token_id = ids[IM_START]
    processor = LlavaProcessor(
        image_processor=_image_processor(image_size),
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's CLS token, removed again by the "default" strategy
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def load_model(path: str | Path, trust_remote_code: bool = False, dtype: str = "float32"):
    """(model, processor) from a directory, on CPU in `dtype` ("float32"; "bfloat16" where the config
    trains in bf16: TrainConfig.weights_dtype / load_dtype; "auto": as saved), in eval mode."""
    hf_logging.disable_progress_bar()  # sicog shows rich progress; tqdm bars would interleave with it
    model = AutoModelForImageTextToText.from_pretrained(
        str(path), dtype=dtype if dtype == "auto" else getattr(torch, dtype), trust_remote_code=trust_remote_code
    )
    processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    model.eval()
    return model, processor


def processed_image_size(image_processor) -> tuple[int, int]:
    """(height, width) of the pixels the image processor makes of a square image.

    Its centre crop when it crops (a real CLIP: resize to `{"shortest_edge": 336}`, crop 336 x 336),
    else its exact `height` x `width` (the tiny demo model), else a `shortest_edge` square. (Some
    image processors, SigLIP's for one, have no centre crop at all.)
    """
    if getattr(image_processor, "do_center_crop", False):
        crop = image_processor.crop_size
        return crop["height"], crop["width"]
    size = image_processor.size
    if size.get("height") and size.get("width"):
        return size["height"], size["width"]
    return size["shortest_edge"], size["shortest_edge"]


def num_image_tokens(processor) -> int:
    """Image tokens one image expands to (576 for CLIP-ViT-L/14-336, 64 for the demo's 8-px patches on 64 px).

    Counted, not re-derived: a blank image of `processed_image_size` goes through the processor
    next to one image marker, and the markers it expands to are counted. So the figure is
    LlavaProcessor's own arithmetic (patch grid of the pixels it produced, plus
    `num_additional_image_tokens`, minus CLS under the "default" feature selection) and cannot drift
    from what training and sampling feed the model.
    """
    height, width = processed_image_size(processor.image_processor)
    blank = Image.new("RGB", (width, height))
    ids = processor(text=processor.image_token, images=blank, add_special_tokens=False)["input_ids"][0]
    return sum(1 for token in ids if token == processor.image_token_id)


def to_messages(conversations: list[dict], has_image: bool, system: str | None = None) -> list[dict]:
    """LLaVA turns ({"from": "human"|"gpt", "value"}) -> transformers chat messages.

    The "<image>" marker of the first human turn becomes a {"type": "image"} item (the template puts
    the image first, as LLaVA data does); markers elsewhere are removed, since one image per record
    is what the records contract allows. `system` (a record's `system` field, see
    sicog.data.normalize) becomes a first {"role": "system"} message; both templates above render
    it as a turn of its own, outside the `{% generation %}` spans, so it never carries the loss.
    """
    messages: list[dict] = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    image_placed = False
    for turn in conversations:
        role = {"human": "user", "gpt": "assistant"}[turn["from"]]
        value = turn["value"]
        if role == "assistant":
            messages.append({"role": role, "content": [{"type": "text", "text": value}]})
            continue
        text = value.replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "").strip("\n") if IMAGE_TOKEN in value else value
        content: list[dict] = []
        if has_image and not image_placed:
            content.append({"type": "image"})
            image_placed = True
        content.append({"type": "text", "text": text})
        messages.append({"role": role, "content": content})
    return messages


def training_chat_template(tokenizer, llm_dir: str | Path) -> str:
    """The chat template a LLaVA built on this LM trains and samples with.

    The trainer's assistant-only loss needs `{% generation %}` marks around assistant turns, which
    released chat templates lack. A template that has them is kept; Qwen2's ChatML gets the marked
    ChatML twin (also when the tokenizer has no template but speaks ChatML) and Llama 3's header
    format its marked twin. Anything else is refused: a guessed format would train the LM on turns
    it has never seen.
    """
    template = tokenizer.chat_template or ""
    if GENERATION_TAG.search(template):
        return template
    if LLAMA3_HEADER in template:
        return LLAMA3_CHAT_TEMPLATE
    if IM_START in template or IM_START in tokenizer.get_vocab():
        return CHAT_TEMPLATE
    raise UserError(f"{llm_dir}: the chat template has no {{% generation %}} markers and is neither ChatML nor Llama 3's; add the markers")


def assemble_model(
    vision_dir: str | Path, llm_dir: str | Path, out_dir: str | Path, seed: int = 0, trust_remote_code: bool = False, dtype: str = "float32"
) -> Path:
    """A LLaVA model from a CLIP checkpoint and a causal LM checkpoint on disk, saved to `out_dir`.

    The paper's set-up (Sec. 4): CLIP-ViT-L/14-336 features from layer -2 (patch tokens, CLS dropped)
    -> a fresh 2-layer GELU projector -> Qwen2-7B-Instruct or Llama-3.1-8B-Instruct. The vision
    tower and the LM keep their weights exactly; the projector is the only new module (seeded). The
    LM's tokenizer gets an "<image>" token (embeddings resized when its vocabulary has no spare row)
    and the processor gets `training_chat_template`, checked before any weight is loaded. Weights are
    loaded, built and saved in `dtype` (bf16: a 7B LLaVA is ~15 GB on disk and in memory, not ~30 GB).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

    hf_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir), trust_remote_code=trust_remote_code)
    template = training_chat_template(tokenizer, llm_dir)
    torch_dtype = getattr(torch, dtype)
    vision = CLIPVisionModel.from_pretrained(str(vision_dir), dtype=torch_dtype)
    lm = AutoModelForCausalLM.from_pretrained(str(llm_dir), dtype=torch_dtype, trust_remote_code=trust_remote_code)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vcfg = vision.config
    try:
        image_processor = CLIPImageProcessor.from_pretrained(str(vision_dir))
    except OSError:  # a bare tower checkpoint: CLIP's preprocessing at the tower's resolution
        image_processor = CLIPImageProcessor(size={"shortest_edge": vcfg.image_size}, crop_size={"height": vcfg.image_size, "width": vcfg.image_size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vcfg.patch_size,
        vision_feature_select_strategy="default",
        chat_template=template,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
    )
    text_config = AutoConfig.from_pretrained(str(llm_dir), trust_remote_code=trust_remote_code)
    config = LlavaConfig(
        vision_config=vcfg,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=num_image_tokens(processor),
        vision_feature_layer=-2,  # the paper's (LLaVA's) choice
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False),
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(config, dtype=torch_dtype)  # built in dtype: no fp32 copy of a 7B model
    model.model.vision_tower.load_state_dict(vision.state_dict())
    lm_state = lm.state_dict()
    model.model.language_model.load_state_dict({k.removeprefix("model."): v for k, v in lm_state.items() if k.startswith("model.")})
    model.lm_head.load_state_dict(lm.lm_head.state_dict())
    if len(tokenizer) > model.config.text_config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    model.generation_config = lm.generation_config
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
