"""One training stage (SICOG steps 1 and 4) on transformers' Trainer, optionally under DeepSpeed.

A stage is the paper's unit (Table 13): stage 1 aligns the projector only, stages 1.5 and 2 (and the
step-1 warm-up) train everything. The demo's tiny model trains its vision tower too in "all" stages,
since, unlike CLIP-ViT-L, it starts from random weights.

The same code runs on one CPU, on `torchrun --nproc_per_node 2` CPU ranks (gloo) and on GPUs: the
Trainer reads torchrun's environment; the global batch is kept by deriving gradient accumulation
(sicog.train.batch); DeepSpeed ZeRO-2/3 is a config dict without an `optimizer` block, so the
Trainer's torch AdamW is used (no DeepSpeed op build) and ZeRO partitions its state.

Resumable: with `train.save_steps` the Trainer writes a checkpoint (safetensors weights, optimizer,
scheduler, RNG states) every N steps; `resume=True` continues from the last one. Data order is a
function of (seed, epoch) only, so a resumed run ends with the weights of an uninterrupted one.

Input: a model directory, LLaVA records (image paths relative to `image_root`), a StageConfig.
Output: the trained model + processor in `out_dir` (safetensors) and `out_dir/train_log.json`.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from sicog.config import StageConfig, TrainConfig
from sicog.models import load_model
from sicog.records import write_json
from sicog.train.batch import batch_plan, world_size
from sicog.train.data import Collator, LazyRecords, pop_late_skips

PROJECTOR = "multi_modal_projector"
CHECKPOINTS = "checkpoints"  # under the stage's out_dir; removed once the stage has finished


def unused_vision_params(model) -> set[str]:
    """Names of the vision tower's parameters that never reach the LM: the encoder layers after
    `vision_feature_layer` (LLaVA reads layer -2, so CLIP's last layer) and the final layer norm. They
    get no gradient, so "all" leaves them frozen: DDP with activation checkpointing (which cannot look
    for unused parameters) would otherwise stop at the second step, and the optimizer keeps no state for them."""
    layer = getattr(model.config, "vision_feature_layer", None)
    vision = getattr(model.config, "vision_config", None)
    if not isinstance(layer, int) or vision is None:
        return set()
    first_unused = (vision.num_hidden_layers + 1 + layer) if layer < 0 else layer  # hidden_states[k] is layer k's output
    unused = set()
    for name, _ in model.named_parameters():
        if "vision_tower." not in name:
            continue
        tail = name.split("vision_tower.", 1)[1]
        if ".post_layernorm." in f".{tail}" or ".head." in f".{tail}":
            unused.add(name)
        elif ".encoder.layers." in f".{tail}" and int(tail.split("encoder.layers.", 1)[1].split(".", 1)[0]) >= first_unused:
            unused.add(name)
    return unused


def set_trainable(model, trainable: str) -> int:
    """Freeze per the stage (vision parameters that never reach the LM stay frozen: unused_vision_params);
    returns the trainable parameter count (checked, not assumed)."""
    unused = unused_vision_params(model)
    for name, param in model.named_parameters():
        param.requires_grad = (trainable == "all" and name not in unused) or PROJECTOR in name
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == "projector":
        projector = next(mod for path, mod in model.named_modules() if path.split(".")[-1] == PROJECTOR)
        expected = sum(p.numel() for p in projector.parameters())
        if n != expected or n == 0:
            raise RuntimeError(f"projector stage would train {n} parameters, the projector has {expected}")
    return n


def deepspeed_config(kind: str) -> dict | None:
    """The DeepSpeed config dict for `zero2` / `zero3` (None for `none`).

    No `optimizer` block: the Trainer builds torch AdamW and DeepSpeed wraps it (hence
    `zero_allow_untested_optimizer`); a DeepSpeed optimizer would compile a C++ op first. "auto"
    values are filled by the Trainer from its arguments, so batch sizes are stated once.
    ZeRO-3 gathers the partitioned weights on save, so the stage output is a usable model.safetensors.
    """
    if kind == "none":
        return None
    stage = {"zero2": 2, "zero3": 3}[kind]
    zero: dict = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_allow_untested_optimizer": True,
    }


def _single_process_env() -> None:
    """DeepSpeed outside torchrun falls back to MPI discovery; give it a one-rank torch environment."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def training_arguments(args_class, out_dir: Path, stage: StageConfig, train: TrainConfig, seed: int, **extra):
    """TrainingArguments (or a subclass such as TRL's DPOConfig) for a stage: the one place where the
    paper's stage settings become Trainer settings."""
    ranks = world_size()
    per_device, accumulation = batch_plan(stage.batch_size, stage.per_device_batch_size, ranks)
    ds = deepspeed_config(train.deepspeed)
    if ds is not None:
        _single_process_env()
    cpu = not torch.cuda.is_available()
    steps = stage.max_steps
    return args_class(
        output_dir=str(out_dir / CHECKPOINTS),
        learning_rate=stage.learning_rate,
        max_steps=steps or -1,  # -1: Trainer runs num_train_epochs
        num_train_epochs=stage.epochs,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        lr_scheduler_type=stage.lr_scheduler,
        warmup_steps=stage.warmup_ratio,  # a float < 1 is a ratio of the total steps (paper: 0.03)
        weight_decay=stage.weight_decay,
        seed=seed,
        data_seed=seed,
        use_cpu=cpu,
        ddp_backend="gloo" if cpu and ranks > 1 else None,
        deepspeed=ds,
        report_to="none",
        save_strategy="steps" if train.save_steps else "no",
        save_steps=train.save_steps or 500,
        save_total_limit=1,
        logging_steps=max(1, (steps or 50) // 50),  # ~50 points per loss curve
        disable_tqdm=True,
        dataloader_num_workers=train.dataloader_workers,
        dataloader_persistent_workers=train.dataloader_workers > 0,  # not re-forked every epoch
        remove_unused_columns=False,  # the collator takes the features it needs
        include_num_input_tokens_seen="non_padding",
        bf16=train.bf16,
        activation_checkpointing=train.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if train.gradient_checkpointing else None,
        # A micro-batch of text-only records leaves the vision tower and projector without gradients. DDP must
        # look for such parameters; the Trainer turns that off under activation checkpointing because the
        # reentrant kind cannot take it, and the non-reentrant kind used here can.
        ddp_find_unused_parameters=True,
        **extra,
    )


class GroupedSampler(torch.utils.data.Sampler):
    """Length-grouped order (LLaVA's `group_by_length`), a pure function of (seed, epoch).

    Shuffle, cut into megabatches of 50 global batches, sort each by length, cut into global
    batches and shuffle the batches: records of a global batch have similar lengths (less padding),
    the batch order stays random, and a resumed run sees the order the uninterrupted run saw.
    """

    def __init__(self, lengths: list[int], group: int, seed: int):
        self.lengths, self.group, self.seed, self.epoch = np.asarray(lengths), group, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        mega = self.group * 50
        batches = []
        for start in range(0, len(order), mega):
            chunk = order[start : start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.group] for i in range(0, len(chunk), self.group)]
        for b in rng.permutation(len(batches)):
            yield from (int(i) for i in batches[b])


class StageTrainer(Trainer):
    """Trainer with a seeded length-grouped sampler built from LazyRecords' lengths (the stock one
    would encode every record to measure it), which counts LazyRecords' late skips from its batches
    (encoded in data-loader workers, whose own counts it never sees)."""

    def __init__(self, *args, group_by_length: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length

    def compute_loss(self, model, inputs, *args, **kwargs):
        return super().compute_loss(model, pop_late_skips(inputs, self.train_dataset), *args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        group = self.args.train_batch_size * self.args.gradient_accumulation_steps * max(1, self.args.world_size)
        return GroupedSampler(dataset.lengths, group, self.args.data_seed)


class _Progress(TrainerCallback):
    """A rich progress bar (instead of tqdm) from the Trainer's events; rank 0 only."""

    def __init__(self, progress: Progress | None, name: str):
        self.progress = progress
        self.name = name
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.task = self.progress.add_task(f"train {self.name}", total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.task is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.task is not None and logs and "loss" in logs:
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


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def own_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())


def last_checkpoint(out_dir: Path) -> str | None:
    """The newest complete checkpoint (trainer_state.json is written last): a kill during a save
    leaves a partial folder, which is passed over."""
    ckpt_dir = out_dir / CHECKPOINTS
    done = [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()] if ckpt_dir.is_dir() else []
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def load_stage_model(model_dir: Path, checkpoint: str | None, dtype: str = "float32"):
    """(model, processor): the model from `checkpoint` when resuming, else from `model_dir`, in `dtype`
    (TrainConfig.load_dtype: bf16 under DeepSpeed with bf16, else fp32 master weights).

    Why not let the Trainer load the checkpoint's weights: transformers 5 saves LLaVA under its
    legacy key names and the Trainer's resume loads them with strict=False, so nothing matches and
    training silently restarts from the initial weights. `from_pretrained` maps the keys.
    """
    from transformers import AutoModelForImageTextToText

    model, processor = load_model(model_dir, dtype=dtype)
    if checkpoint is not None:
        model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=getattr(torch, dtype))
    return model, processor


def run_trainer(trainer: Trainer, out_dir: Path, name: str, progress: Progress | None, checkpoint: str | None) -> float:
    """Train (continuing from `checkpoint`: optimizer, scheduler, RNG, data position), with a rank-0 progress bar; returns seconds."""
    trainer.remove_callback(PrinterCallback)  # disable_tqdm adds it; the loss goes to the bar and the log
    bar = None
    if is_main_process():
        bar = progress or own_progress()
        if progress is None:
            bar.start()
    trainer.add_callback(_Progress(bar, name))
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        if bar is not None and progress is None:
            bar.stop()
    return time.perf_counter() - start


def to_training_dtype(model, bf16: bool) -> None:
    """Cast a trained model to bf16 when the run trained in bf16 (the paper's setting), so that it is
    saved the way it trained: half the bytes of fp32, and a config.json whose dtypes say bfloat16.

    The plain Trainer's bf16 is autocast over fp32 weights, which save_pretrained would write as
    fp32; DeepSpeed already holds its module's weights in bf16 (ZeRO-3 partitions included), so
    there nothing is cast. save_pretrained records the top-level dtype only, so the vision and text
    sub-configs, still saying float32 from the fp32 load, are set here. An fp32 run (the CPU demo)
    stays fp32.
    """
    if not bf16:
        return
    if model.dtype != torch.bfloat16:
        model.to(torch.bfloat16)
    for key in model.config.sub_configs:
        sub_config = getattr(model.config, key, None)
        if sub_config is not None:
            sub_config.dtype = torch.bfloat16


def save_stage(trainer: Trainer, processor, out_dir: Path) -> None:
    """Final weights as one model.safetensors + processor (rank 0), in the dtype the stage trained
    in (`to_training_dtype`); the checkpoints go.

    ZeRO-3's partitioned weights are gathered on every rank (a collective) and rank 0 saves the
    module with save_pretrained: one consolidated file, no training_args.bin pickle. (Under ZeRO-3
    the file's key names differ from a plain save, e.g. language_model.model.model.*; transformers'
    LLaVA key conversion loads both, which tests/test_distributed.py checks value by value.)
    """
    model = trainer.model
    to_training_dtype(model, trainer.args.bf16)
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.deepspeed_plugin.zero_stage == 3
    if zero3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    else:
        gathered = nullcontext()
    with gathered:
        if trainer.is_world_process_zero():
            model.save_pretrained(out_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(out_dir)
        shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)


def stage_log(trainer: Trainer, name: str, seconds: float, resumed_from: str | None, **figures) -> dict:
    """The figures every stage reports; loss history comes from the Trainer's state (complete across resumes)."""
    args = trainer.args
    tokens = int(trainer.state.num_input_tokens_seen)
    return {
        "name": name,
        "steps": trainer.state.global_step,
        "loss_history": [[h["step"], float(h["loss"])] for h in trainer.state.log_history if "loss" in h],
        "train_seconds": round(seconds, 3),
        "tokens_seen": tokens,
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,  # this run only when resumed: see resumed_from
        "world_size": max(1, args.world_size),
        "per_device_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "deepspeed": (args.deepspeed or {}).get("zero_optimization", {}).get("stage") if isinstance(args.deepspeed, dict) else None,
        "resumed_from": Path(resumed_from).name if resumed_from else None,
        **figures,
    }


def train_stage(
    model_dir: str | Path,
    records: list[dict],
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
    """Train one stage from `model_dir` on `records`; save to `out_dir`; return the train log.

    `stage.max_steps` governs (fewer records than max_steps batches means more epochs); 0 (null)
    means `stage.epochs` epochs. Records that cannot be used are skipped and counted in the log's
    `skipped`. `train`: run-wide settings (max length, length grouping, bf16, DeepSpeed,
    checkpointing; default TrainConfig()). `progress`: a running rich Progress to add this stage's
    bar to. `threads`: torch intra-op threads (see `_torch_threads`). `resume`: continue from the
    last checkpoint under `out_dir/checkpoints` if there is one.
    """
    train = train or TrainConfig()
    with _torch_threads(threads):
        return _train(Path(model_dir), records, image_root, Path(out_dir), stage, train, seed, name, progress, resume)


def _train(model_dir, records, image_root, out_dir: Path, stage, train: TrainConfig, seed, name, progress, resume) -> dict:
    args = training_arguments(TrainingArguments, out_dir, stage, train, seed)  # refuses a bad batch plan first
    checkpoint = last_checkpoint(out_dir) if resume else None
    model, processor = load_stage_model(model_dir, checkpoint, train.load_dtype)
    dataset = LazyRecords(records, processor, image_root, train.max_length)
    if not len(dataset):
        raise ValueError(f"stage {name}: no trainable records ({dict(dataset.skipped)} skipped of {len(records)})")
    trainable = set_trainable(model, stage.trainable)
    model.train()
    trainer = StageTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=Collator(processor.tokenizer.pad_token_id),
        group_by_length=train.group_by_length,
    )
    seconds = run_trainer(trainer, out_dir, name, progress, checkpoint)
    model.eval()
    save_stage(trainer, processor, out_dir)
    log = stage_log(trainer, name, seconds, checkpoint, skipped=dict(dataset.skipped), records=len(dataset), trainable_params=trainable)
    if trainer.is_world_process_zero():
        write_json(out_dir / "train_log.json", log)
    return log
