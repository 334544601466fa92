"""The DPO variant of step 1 on TRL's DPOTrainer: DPO (beta 0.1) plus an SFT term on the chosen answer.

Paper (DPO variant): preference pairs whose rejected answer is the model's own answer on a
corrupted image (sicog.annotate.dpo); loss = DPO with beta 0.1 + 1.0 x SFT (negative log-likelihood
of the chosen answer). TRL expresses the sum as `loss_type=["sigmoid", "sft"]` with
`loss_weights=[1.0, sft_weight]`; the reference model is a frozen copy of the starting model.

Images are read lazily: the dataset holds paths (a `datasets.Image` column decodes on access) and
TRL's vision collator tokenizes and processes each batch on the fly. Pairs whose image is missing or
unreadable, or whose prompt + longer answer exceeds `max_length`, are skipped and counted.

Everything else (batch arithmetic, DeepSpeed, checkpoints, resume, logs) is the SFT stage's code
in sicog.train.trainer, so a DPO stage is launched, resumed and reported like any other.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.progress import Progress

from sicog.config import StageConfig, TrainConfig
from sicog.data.images import image_data
from sicog.models import load_model, num_image_tokens, to_messages
from sicog.records import write_json
from sicog.train.data import BAD_IMAGE, MALFORMED, TOO_LONG
from sicog.train.trainer import _torch_threads, last_checkpoint, load_stage_model, run_trainer, save_stage, set_trainable, stage_log, training_arguments


def _dataset(pairs: list[dict], processor, image_root, max_length: int):
    """(datasets.Dataset of TRL's vision preference format, skipped counts)."""
    from datasets import Dataset, Image, Sequence

    skipped: Counter = Counter()
    rows = []
    image_tokens = num_image_tokens(processor)
    tok = processor.tokenizer
    for pair in pairs:
        # An empty rejected answer (the model stopped at once) is still a preference: keep it.
        if not all(isinstance(pair.get(k), str) and pair[k].strip() for k in ("prompt", "chosen", "image")) or not isinstance(pair.get("rejected"), str):
            skipped[MALFORMED] += 1
            continue
        try:
            image = {"bytes": image_data(pair["image"], image_root)}  # a local file, an s3:// object or a dataset's image
        except ValueError:
            skipped[BAD_IMAGE] += 1
            continue
        prompt_text = processor.apply_chat_template(to_messages([{"from": "human", "value": pair["prompt"]}], has_image=True), add_generation_prompt=True)
        longest = max(len(tok(pair[k] + tok.eos_token, add_special_tokens=False)["input_ids"]) for k in ("chosen", "rejected"))
        if len(tok(prompt_text, add_special_tokens=False)["input_ids"]) + image_tokens - 1 + longest > max_length:
            skipped[TOO_LONG] += 1
            continue
        rows.append(
            {
                "images": [image],
                "prompt": [{"role": "user", "content": pair["prompt"]}],
                "chosen": [{"role": "assistant", "content": pair["chosen"]}],
                "rejected": [{"role": "assistant", "content": pair["rejected"]}],
            }
        )
    dataset = Dataset.from_list(rows) if rows else None
    if dataset is not None:
        dataset = dataset.cast_column("images", Sequence(Image()))  # encoded bytes, decoded when a batch needs them
    return dataset, skipped


def train_dpo(
    model_dir: str | Path,
    pairs: list[dict],
    image_root: str | Path,
    out_dir: str | Path,
    stage: StageConfig,
    train: TrainConfig | None = None,
    seed: int = 0,
    name: str = "",
    progress: Progress | None = None,
    threads: int | None = None,
    resume: bool = False,
) -> dict:
    """Train `model_dir` with DPO + SFT on `pairs` (rows of sicog dpo-pairs); save to `out_dir`; return the log."""
    from trl import DPOConfig, DPOTrainer

    train = train or TrainConfig()
    out_dir = Path(out_dir)
    with _torch_threads(threads):
        args = training_arguments(
            DPOConfig,
            out_dir,
            stage,
            train,
            seed,
            beta=train.dpo_beta,
            loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, train.dpo_sft_weight],
            max_length=train.max_length,
        )
        checkpoint = last_checkpoint(out_dir) if resume else None
        model, processor = load_stage_model(Path(model_dir), checkpoint, train.load_dtype)
        dataset, skipped = _dataset(pairs, processor, image_root, train.max_length)
        if dataset is None:
            raise ValueError(f"stage {name}: no usable preference pairs ({dict(skipped)} skipped of {len(pairs)})")
        ref_model, _ = load_model(model_dir, dtype=train.weights_dtype)  # frozen: no master weights needed
        trainable = set_trainable(model, stage.trainable)
        model.train()
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=processor)
        seconds = run_trainer(trainer, out_dir, name, progress, checkpoint)
        model.eval()
        save_stage(trainer, processor, out_dir)
        log = stage_log(trainer, name, seconds, checkpoint, skipped=dict(skipped), records=len(dataset), trainable_params=trainable)
        if trainer.is_world_process_zero():
            write_json(out_dir / "train_log.json", log)
        return log
