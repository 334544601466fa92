"""The model step: the cycle's starting model, and the backbone LLM that answers text-only prompts.

`init_model` — Input: the world (its text trains a fresh model's tokenizer). Output: a fresh tiny LLaVA
(random weights, tokenizer trained on the world's text), or nothing when `model.start` names a model
in the store: that URI is the starting model, read where it is (a 7B model is not copied).
`extract_backbone` — Input: the base LLaVA. Output: its language model (language_model + lm_head) as
a causal-LM folder with the tokenizer, or only `backbone.json` when the text task is answered by a
separate LLM (`sample.backbone`) or by a served engine at `sample.endpoint`. Figures: which backbone.
Paper: Sec. 4 (LLaVA set-up: CLIP + LLM + projector) and App. A (text-only data from the backbone LLM).
"""

from __future__ import annotations

from pathlib import Path

from sicog.data import read_role, run_catalog
from sicog.records import IMAGE_TOKEN, write_json
from sicog.steps._io import StepIO, as_config, open_step, read_json

# The catalog roles whose texts train a fresh model's tokenizer (a user catalog without a world).
TOKENIZER_ROLES = ("align", "instruct", "perception", "reasoning", "pool_vqa", "pool_text")


def _catalog_texts(world_dir: Path):
    catalog = run_catalog(world_dir)
    for role in TOKENIZER_ROLES:
        for rec in read_role(catalog, role)[0]:
            yield from (turn["value"].replace(IMAGE_TOKEN, "").strip() for turn in rec.get("conversations", []))


def init_model(config, io: StepIO) -> str | None:
    """A fresh tiny LLaVA in io.out and None, or, with `model.start`, nothing written and that URI: the
    starting model is read where it is."""
    from sicog.models import init_model as build
    from sicog.world import world_texts

    cfg = as_config(config)
    with open_step(io, cycle=cfg.cycle) as step:
        if cfg.model.start:
            step.figures["start"] = cfg.model.start
            return cfg.model.start
        world_dir = step.input("world")
        texts = world_texts(world_dir) if (world_dir / "base.jsonl").is_file() else _catalog_texts(world_dir)
        build(step.out, texts, cfg.model, image_size=cfg.world.image_size, seed=cfg.seed)
        write_json(step.out / "lineage.json", [])
    return None


def extract_backbone(config, io: StepIO) -> dict:
    """See the module docstring; io.inputs: {"model": the base LLaVA}."""
    from sicog.generate.backbone import BACKBONE_FILE
    from sicog.generate.backbone import extract_backbone as extract

    cfg = as_config(config)
    served = cfg.sample.engine != "local" and cfg.sample.endpoint
    with open_step(StepIO(io.name, io.out, {} if cfg.sample.backbone or served else io.inputs), cycle=cfg.cycle) as step:
        if cfg.sample.backbone or served:
            source = cfg.sample.backbone or f"{cfg.sample.endpoint}#{cfg.sample.served_model}"
            write_json(step.out / BACKBONE_FILE, {"model": source, "extracted_from": None})
            step.figures["backbone"] = source
        else:
            extract(step.input("model"), step.out, trust_remote_code=cfg.model.trust_remote_code)
            step.figures["backbone"] = read_json(step.out / BACKBONE_FILE, {}).get("model")
    return step.figures
