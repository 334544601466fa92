"""One SFT training stage (SICOG steps 1 and 4) on transformers' Trainer.

A stage is the paper's unit (Table 13): stage 1 aligns the projector only, stages 1.5 and 2 (and the
step-1 warm-up) train everything. The demo's tiny model trains its vision tower too in "all" stages,
since, unlike CLIP-ViT-L, it starts from random weights.

Input: a model directory, LLaVA records (image paths relative to `image_root`), a StageConfig.
Output: the trained model + processor in `out_dir` (safetensors) and `out_dir/train_log.json`.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from sicog.config import StageConfig
from sicog.models import load_model
from sicog.records import write_json
from sicog.train.data import Collator, encode_records

PROJECTOR = "multi_modal_projector"


def set_trainable(model, trainable: str) -> int:
    """Freeze per the stage; returns the trainable parameter count (checked, not assumed)."""
    for name, param in model.named_parameters():
        param.requires_grad = trainable == "all" or PROJECTOR in name
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == "projector":
        projector = next(mod for path, mod in model.named_modules() if path.split(".")[-1] == PROJECTOR)
        expected = sum(p.numel() for p in projector.parameters())
        if n != expected or n == 0:
            raise RuntimeError(f"projector stage would train {n} parameters, the projector has {expected}")
    return n


class _Progress(TrainerCallback):
    """A rich progress bar (instead of tqdm) and the loss history, from the Trainer's events."""

    def __init__(self, progress: Progress, name: str):
        self.progress = progress
        self.name = name
        self.task = None
        self.loss_history: list[list[float]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.task = self.progress.add_task(f"train {self.name}", total=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss_history.append([state.global_step, float(logs["loss"])])
            self.progress.update(self.task, description=f"train {self.name} loss {logs['loss']:.3f}")


@contextmanager
def _torch_threads(threads: int | None):
    """Run with `threads` intra-op threads, restoring the caller's setting after.

    Default: OMP_NUM_THREADS if set, else the cores this process may run on (cpuset-aware, unlike
    torch's own default, which can count the host's cores inside a container).
    """
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_stage(
    model_dir: str | Path,
    records: list[dict],
    image_root: str | Path,
    out_dir: str | Path,
    stage: StageConfig,
    max_length: int,
    seed: int,
    name: str,
    progress: Progress | None = None,
    group_by_length: bool = False,
    threads: int | None = None,
    bf16: bool = False,
) -> dict:
    """Train one stage from `model_dir` on `records`; save to `out_dir`; return the train log.

    `stage.max_steps` governs: fewer records than a batch, or than max_steps batches, simply means
    more epochs. Records that cannot be encoded are skipped and counted in the log's `skipped`.
    `progress`: a running rich Progress to add this stage's bar to (default: a bar of its own).
    `group_by_length`: batch records of similar length (less padding; LLaVA's option).
    `threads`: torch intra-op threads for this stage (see `_torch_threads`).
    `bf16`: bf16 autocast (weights stay float32 and are saved as such).
    """
    with _torch_threads(threads):
        return _train(model_dir, records, image_root, Path(out_dir), stage, max_length, seed, name, progress, group_by_length, bf16)


def _train(model_dir, records, image_root, out_dir: Path, stage, max_length, seed, name, progress, group_by_length, bf16) -> dict:
    model, processor = load_model(model_dir)
    features, skipped = encode_records(records, processor, image_root, max_length)
    if not features:
        raise ValueError(f"stage {name}: no trainable records ({dict(skipped)} skipped of {len(records)})")
    trainable = set_trainable(model, stage.trainable)
    model.train()

    args = TrainingArguments(
        output_dir=str(out_dir),
        learning_rate=stage.learning_rate,
        max_steps=stage.max_steps,
        per_device_train_batch_size=stage.batch_size,
        lr_scheduler_type=stage.lr_scheduler,
        warmup_steps=math.ceil(stage.warmup_ratio * stage.max_steps),
        weight_decay=stage.weight_decay,
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        logging_steps=max(1, stage.max_steps // 50),  # ~50 points per loss curve
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # the collator takes the features it needs
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        include_num_input_tokens_seen="non_padding",
        bf16=bf16,
    )
    own_progress = progress is None
    if own_progress:
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()
        )
        progress.start()
    callback = _Progress(progress, name)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=Collator(processor.tokenizer.pad_token_id),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm adds it; the loss goes to the bar and the log
    start = time.perf_counter()
    try:
        trainer.train()
    finally:
        if own_progress:
            progress.stop()
    seconds = time.perf_counter() - start

    model.eval()
    # model.save_pretrained, not trainer.save_model: the latter also pickles training_args.bin.
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    log = {
        "name": name,
        "steps": trainer.state.global_step,
        "loss_history": callback.loss_history,
        "train_seconds": round(seconds, 3),
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "skipped": dict(skipped),
        "records": len(features),
        "trainable_params": trainable,
    }
    write_json(out_dir / "train_log.json", log)
    return log
