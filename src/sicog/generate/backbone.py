"""The backbone LLM that answers text-only prompts in SICOG step 2.

Paper App. A: text-only candidates are "3 answers per text-only prompt from the backbone LLM", not
from the multimodal model. The backbone is either a causal LM named in the config
(`sample.backbone`, e.g. Qwen2-7B-Instruct) or the language model inside a LLaVA checkpoint:
`model.model.language_model` + `lm_head`, saved here as a plain causal-LM folder
(`save_pretrained`, safetensors) with the LLaVA's tokenizer and chat template, so that the same
LocalSampler (same per-candidate seeds, temperature and top-p) samples from it.

Input: a LLaVA folder (`sicog.models` layout). Output: a causal-LM folder + tokenizer, the LLaVA's
`lineage.json` (so a retrained LLaVA never resumes stale chunks) and `backbone.json`
({"model": "<run>:backbone", "extracted_from": "<run>"}): the name candidates carry in `model`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sicog.errors import UserError

BACKBONE_FILE = "backbone.json"
BACKBONE_SUFFIX = ":backbone"


def is_multimodal(model_dir: str | Path) -> bool:
    """Whether a model folder holds an image-text model (a LLaVA: its config has a vision tower)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return "vision_config" in config


def model_name(model_dir: str | Path) -> str:
    """Which model a folder holds, as candidates record it: an extracted backbone's `backbone.json`
    name, else the last training run of its lineage (e.g. "perception/warmup"), else the folder name
    (pipeline artifacts all live in folders of the same name)."""
    model_dir = Path(model_dir)
    if (model_dir / BACKBONE_FILE).is_file():
        return json.loads((model_dir / BACKBONE_FILE).read_text())["model"]
    lineage = model_dir / "lineage.json"
    if lineage.is_file():
        runs = json.loads(lineage.read_text())
        if runs:
            return runs[-1]["name"]
    return model_dir.name


def extract_backbone(llava_dir: str | Path, out_dir: str | Path, trust_remote_code: bool = False) -> Path:
    """Save the language model of the LLaVA at `llava_dir` as a causal-LM folder in `out_dir`.

    The weights are the LLaVA's own, bit for bit, in the checkpoint's dtype: on a text-only prompt
    the backbone computes the same logits as the LLaVA does."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    llava_dir, out_dir = Path(llava_dir), Path(out_dir)
    if not is_multimodal(llava_dir):
        raise UserError(f"{llava_dir} is not an image-text (LLaVA) checkpoint: its config has no vision tower")
    llava = AutoModelForImageTextToText.from_pretrained(str(llava_dir), dtype="auto", trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(str(llava_dir), trust_remote_code=trust_remote_code)
    dtype = next(llava.parameters()).dtype
    lm = AutoModelForCausalLM.from_config(llava.config.text_config, dtype=dtype, trust_remote_code=trust_remote_code)
    lm.model.load_state_dict(llava.model.language_model.state_dict())  # strict: every weight, nothing left random
    lm.lm_head.load_state_dict(llava.lm_head.state_dict())
    lm.generation_config = llava.generation_config
    lm.eval()
    tokenizer = processor.tokenizer
    if not tokenizer.chat_template and getattr(processor, "chat_template", None):
        tokenizer.chat_template = processor.chat_template
    out_dir.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if (llava_dir / "lineage.json").is_file():
        shutil.copyfile(llava_dir / "lineage.json", out_dir / "lineage.json")
    source = model_name(llava_dir)
    (out_dir / BACKBONE_FILE).write_text(json.dumps({"model": f"{source}{BACKBONE_SUFFIX}", "extracted_from": source}, indent=2) + "\n")
    return out_dir
