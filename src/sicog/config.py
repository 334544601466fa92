"""The one typed configuration of a SICOG cycle.

Every command and every pipeline component reads the same `SicogConfig`: a laptop run and a cluster
run differ only by values, never by code path. Sections mirror the four SICOG steps. Defaults that
come from the paper (arXiv 2503.12303, Table 13 and Sec. 3) say so; defaults that only size the
CPU demo say that instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sicog.errors import UserError
from sicog.evaluate.benchmarks import BENCHMARKS, JUDGED


class ConfigError(UserError):
    """A user error in the configuration: reported as one line, never as a traceback. (Validators raise
    ValueError, as pydantic wants; validate_config turns what they say into a ConfigError.)"""


class _Section(BaseModel):
    # Unknown keys are errors: a typo in a YAML file must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WorldConfig(_Section):
    """The procedural demo world: images of coloured shapes with exact ground truth."""

    seed: int = Field(0, description="Seed of the world; the same seed gives byte-identical files.")
    image_size: int = Field(64, ge=32, description="Square image side in pixels (demo: 64).")
    max_objects: int = Field(3, ge=1, le=6, description="Objects per image are 1..max_objects.")
    n_base: int = Field(2000, ge=1, description="Images in the base split (trains the demo's base model).")
    n_annotated: int = Field(300, ge=1, description="Images in the small step-1 annotated split.")
    n_pool_images: int = Field(300, ge=0, description="Unlabeled images to caption (step 2).")
    n_pool_vqa: int = Field(600, ge=0, description="Unlabeled image-question pairs (step 2).")
    n_pool_text: int = Field(200, ge=0, description="Text-only prompts answered by the backbone LLM (step 2, paper App. A).")
    n_heldout: int = Field(300, ge=1, description="Held-out images for evaluation.")
    qtypes: list[Literal["color", "shape", "count", "exist", "position", "background"]] = Field(
        default_factory=list,
        description="Question kinds every split asks (a scene's kinds without a unique answer are left out); empty: all six.",
    )
    labeled_backgrounds: list[Literal["white", "black", "gray"]] = Field(
        default_factory=list,
        description="A distribution shift: backgrounds of the labeled splits (base, annotated) only; the pools and the held-out "
        "split draw from all three, so their images carry what the labeled set lacks (as the paper's unlabeled deployment "
        "images). Empty: no shift.",
    )
    labeled_sizes: list[Literal["small", "large"]] = Field(
        default_factory=list, description="A distribution shift: object sizes of the labeled splits only (see labeled_backgrounds). Empty: no shift."
    )

    @field_validator("qtypes")
    @classmethod
    def _some_kind_always_asked(cls, value: list[str]) -> list[str]:
        # colour and shape questions need an object that names uniquely; a scene without one would have no question.
        if value and not set(value) - {"color", "shape"}:
            raise ValueError("world.qtypes needs a kind every scene can answer (count, exist, position or background)")
        return value


class DataConfig(_Section):
    """Where the cycle's data come from: a catalog of the user's datasets per SICOG role (sicog.data)."""

    catalog: str = Field(
        "",
        description="Store URI (local path, file://, s3://) of a data catalog (see `sicog data check`); "
        "empty: the procedural demo world, which writes a catalog of its own files.",
    )
    pool_per_cycle: int = Field(
        0,
        ge=0,
        description="Records of each pool role one cycle samples: cycle c takes rows (c-1)*N .. c*N-1 of the role "
        "(its sources in order, each in file order), so the cycles of a series never reuse pool records (paper App. G: a new "
        "pool each cycle); a pool too short for cycle c stops it with one line. 0: the whole pool, every cycle.",
    )


class ModelConfig(_Section):
    """Tiny LLaVA (CLIP-style vision tower + projector + Qwen2-style LM) sized for CPU."""

    patch_size: int = Field(8, description="Vision patch size; 8 px on 64 px images gives 64 image tokens.")
    vision_hidden: int = Field(64, description="Vision tower width.")
    vision_layers: int = Field(2, ge=2, description="Vision layers (features come from layer -2, as in LLaVA).")
    lm_hidden: int = Field(128, description="Language model width.")
    lm_layers: int = Field(2, ge=1, description="Language model layers.")
    heads: int = Field(4, description="Attention heads (vision and LM).")
    kv_heads: int = Field(2, description="LM key/value heads (grouped-query attention, as in Qwen2).")
    intermediate: int = Field(256, description="LM MLP width.")
    vocab_size: int = Field(1024, description="Tokenizer vocabulary trained offline on the world's text.")
    trust_remote_code: bool = Field(False, description="Never load remote code unless asked to.")
    start: str = Field(
        "",
        description="Store URI of a trained model (save_pretrained folder) the cycle starts from instead of a fresh tiny "
        "one; a cycle in a series sets it to the last successful cycle's model (see sicog.lineage).",
    )
    foundation: bool = Field(
        False,
        description="`start` is a foundation model, already aligned and instruction-tuned: stage 1 and the base model's "
        "stage 2 are not re-run; the base model is `start` itself, and the warm-ups and stage 1.5 start from it (paper App. G: "
        "cycle n+1 takes cycle n's model as its foundation model). A cycle in a series sets it; false: `start` goes through stage 1.",
    )


class StageConfig(_Section):
    """One training stage. The paper's values are in configs/paper-qwen2-7b.yaml; the demo scales them."""

    learning_rate: float = Field(2e-5, gt=0, description="Paper: 2e-4 for stage 1, 2e-5 otherwise (Table 13).")
    max_steps: int = Field(100, ge=0, description="Optimizer steps (the demo's documented step budget); 0 or null: train `epochs` epochs.")
    epochs: float = Field(1.0, gt=0, description="Epochs when max_steps is null (paper: 1, Table 13).")
    batch_size: int = Field(32, ge=1, description="Global batch (paper: 256 stage 1, 128 otherwise), kept whatever the world size.")
    per_device_batch_size: int | None = Field(
        None, ge=1, description="Records per device per micro-step; accumulation = batch_size / (this x ranks). Null: batch_size / ranks."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Paper: 0.03.")
    weight_decay: float = Field(0.0, ge=0, description="Paper: 0.")
    lr_scheduler: str = Field("cosine", description="Paper: cosine.")
    trainable: Literal["projector", "all"] = Field("all", description="Stage 1 trains the projector only.")

    @field_validator("max_steps", mode="before")
    @classmethod
    def _no_step_budget(cls, value: Any) -> Any:
        # null reads best in YAML; 0 is what a KFP parameter (no nulls) can carry.
        return 0 if value is None else value


def _stage(lr: float, steps: int, trainable: str = "all") -> Any:
    return Field(default_factory=lambda: StageConfig(learning_rate=lr, max_steps=steps, trainable=trainable))


class TrainConfig(_Section):
    """Step 1 (warm-up) and step 4 (re-pretraining) stages, plus what stage 1.5 mixes in."""

    max_length: int = Field(512, ge=16, description="Longest tokenized record (paper: 4096); longer ones are skipped.")
    align: StageConfig = _stage(2e-3, 100, "projector")
    instruct: StageConfig = _stage(2e-3, 600)
    warmup: StageConfig = _stage(1e-3, 150)
    pretrain: StageConfig = _stage(1e-3, 200)
    group_by_length: bool = Field(
        False,
        description="Batch records of similar length (LLaVA option): ~15% less padding, but on the demo world it made batches single-task and stalled learning.",
    )
    bf16: bool = Field(
        False,
        description="bf16 (paper: bf16): stages train under bf16, trained models are saved in bf16, and assembling, sampling and "
        "evaluation load weights in bf16 (a 7B LLaVA is ~15 GB, not ~30 GB). false: float32 throughout (the CPU demo).",
    )
    deepspeed: Literal["none", "zero2", "zero3"] = Field(
        "none",
        description="Paper: ZeRO-2. zero3 partitions weights too and saves a consolidated model.safetensors. none: plain Trainer/DDP (the CPU demo: measured faster on a tiny model).",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (paper: on; the tiny demo model does not need it).")
    nproc: int = Field(1, ge=1, description="Processes torchrun starts per local training task (one per GPU; gloo on CPU).")
    dataloader_workers: int = Field(
        0,
        ge=0,
        description="Data-loader worker processes per rank that read, fetch and decode images and tokenize records while the "
        "GPU trains (paper scale: 4). 0: in the training process (the CPU demo, whose two cores are busy training).",
    )
    save_steps: int = Field(0, ge=0, description="Checkpoint (safetensors + optimizer + RNG state) every N optimizer steps for --resume; 0: none.")
    step1: Literal["sft", "dpo"] = Field(
        "sft", description="Step-1 warm-up: sft (paper's main method) or dpo (paper's variant: pairs against answers on corrupted images, DPO + SFT)."
    )
    dpo: StageConfig = _stage(1e-5, 100)
    dpo_beta: float = Field(0.1, gt=0, description="DPO beta (paper's DPO variant: 0.1).")
    dpo_sft_weight: float = Field(1.0, ge=0, description="Weight of the SFT term on the chosen answer added to the DPO loss (paper: 1.0).")
    pretrain_mix: list[Literal["align", "instruct", "perception", "reasoning"]] = Field(
        default_factory=list,
        description="Labeled catalog roles mixed into stage 1.5 beside the curated data (paper: curated only).",
    )
    carry_curated: bool = Field(
        False,
        description="In a series, stage 1.5 of cycle n+1 trains on its own curated data plus that of every earlier "
        "promoted cycle (paper App. G's option of keeping earlier self-generated data); false: its own only.",
    )
    earlier_curated: list[str] = Field(
        default_factory=list,
        description="Store URIs of earlier cycles' curated datasets (folders with curated.jsonl) added to "
        "stage 1.5's curated data; set by a series' start from its lineage when carry_curated is on.",
    )

    @property
    def weights_dtype(self) -> str:
        """The dtype models are assembled, stored, sampled and evaluated in: "bfloat16" with bf16, else "float32"."""
        return "bfloat16" if self.bf16 else "float32"

    @property
    def load_dtype(self) -> str:
        """The dtype a training stage loads its model in. DeepSpeed keeps fp32 master weights in its optimizer
        and runs the module in bf16, so its ranks load bf16 (half the host memory per rank); the plain Trainer's
        bf16 is autocast, whose optimizer steps the module's own weights, which must therefore be fp32."""
        return "bfloat16" if self.bf16 and self.deepspeed != "none" else "float32"


ENGINE_IMAGES = {
    "tgi": "ghcr.io/huggingface/text-generation-inference:3.3.6",
    "vllm": "vllm/vllm-openai:v0.33.0",  # choice k of a seeded `n` request: seed + k (sicog.generate.remote)
    "sglang": "lmsysorg/sglang:v0.5.23",  # seeds honoured with --enable-deterministic-inference (sicog.cluster.serving)
}


class ServerConfig(_Section):
    """The cycle-scoped inference server of each sampling model (perception, reasoning, backbone LLM),
    deployed by the compiled pipeline when `sample.engine` is a served engine and `sample.endpoint` is
    empty: a Deployment + Service named from the run and the model, removed by the pipeline's exit
    handler, and by `sicog serve sweep` (any later run's launch task, or the chart's CronJob) once its
    run has ended or its `ttl_s` has passed. Placement (GPU resource, node selector, tolerations,
    S3 secret) comes from `cluster`."""

    image: str = Field("", description="Engine image; empty: the engine's release in sicog.config.ENGINE_IMAGES.")
    gpus: int = Field(1, ge=1, description="GPUs per server (tensor parallel degree). A 7B LLaVA in bf16 fits one A100-80GB.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the engine's HTTP server and of its Service.")
    cpu: str = Field("8", description="CPU request of the server pod.")
    memory: str = Field("64Gi", description="Memory request of the server pod.")
    startup_s: float = Field(1800.0, gt=0, description="Longest wait for the server to become ready (model download from the store + load + warm-up).")
    ttl_s: float = Field(
        86400.0, gt=0, description="Lifetime after which a sweep deletes the server whatever its run's state (the backstop when the exit handler never ran)."
    )
    extra_args: list[str] = Field(default_factory=list, description="Extra engine arguments, e.g. [--max-model-len, '8192'].")


class SampleConfig(_Section):
    """Step 2: candidate generation (paper Sec. 3.2: temperature 0.7, top_p 0.95)."""

    temperature: float = Field(0.7, gt=0, description="Paper: 0.7.")
    top_p: float = Field(0.95, gt=0, le=1, description="Paper: 0.95.")
    max_new_tokens: int = Field(256, ge=1, description="Reference scripts: 1200; the demo's answers are shorter.")
    batch_size: int = Field(64, ge=1, description="Sequences decoded together by the in-process sampler.")
    caption_plan: dict[Literal["cod", "dd"], int] = Field(default_factory=lambda: {"cod": 2, "dd": 1}, description="Paper: 2 CoD + 1 DD per image.")
    vqa_plan: dict[Literal["cot", "da"], int] = Field(default_factory=lambda: {"cot": 2, "da": 1}, description="Paper: 2 CoT + 1 DA per image-question.")
    text_candidates: int = Field(3, ge=1, description="Paper: 3 answers per text-only prompt.")
    backbone: str = Field(
        "",
        description="Text-only candidates come from the backbone LLM (paper App. A: '3 answers per text-only prompt from the "
        "backbone LLM'): a causal-LM folder or store URI (e.g. Qwen2-7B-Instruct). Empty: the language model inside the base "
        "LLaVA (its language_model + lm_head), extracted by the pipeline's extract-backbone step. Engine local only.",
    )
    # Sharding and resume: a pool is split into shards by a hash of record id, a shard into chunks.
    shards: int = Field(
        2,
        ge=1,
        description="Shards per task's pool (record -> sha256(id) mod shards); the pipeline runs one task per shard. Demo: 2 (each kfp.local task costs ~8 s of start-up).",
    )
    chunk_size: int = Field(
        64, ge=1, description="Source records per chunk: the unit that is published and skipped on resume (at most one chunk is redone after a kill)."
    )
    # Served engines: chat completions over HTTP (TGI, vLLM, SGLang; `transformers serve` locally).
    engine: Literal["local", "openai", "tgi", "vllm", "sglang"] = Field(
        "local",
        description="local = in-process transformers generate. Served: chat completions against `endpoint` when set, "
        "else (compiled for a cluster) against a server the pipeline deploys per sampling model for the run (see `server`; "
        "tgi, vllm and sglang only). openai = any other OpenAI-compatible server (e.g. transformers serve): one request per "
        "candidate. TGI cannot serve HF LLaVA (model_type llava): a deployed TGI serves the text-only task only.",
    )
    endpoint: str = Field(
        "",
        description="Served engines: base URL of a running server (e.g. http://tgi:8080/v1); the client appends /chat/completions. Empty on a cluster: the run deploys its own servers.",
    )
    served_model: str = Field(
        "",
        description="Served engines with `endpoint`: the `model` sent with each request (TGI ignores it; vLLM, SGLang and transformers serve need the served name).",
    )
    concurrency: int = Field(
        128,
        ge=1,
        description="Served engines: requests in flight per sampling task; a deployed server is started with the same batch capacity (vLLM --max-num-seqs, SGLang --max-running-requests, TGI --max-concurrent-requests).",
    )
    timeout_s: float = Field(600.0, gt=0, description="Served engines: seconds one request may take before it is retried.")
    max_attempts: int = Field(
        4, ge=1, description="Served engines: attempts per request on 429 / 5xx / timeouts / connection errors before failure rows are written."
    )
    share_prefill: bool = Field(
        True,
        description="vLLM and SGLang: the candidates that share a prompt (e.g. the 2 CoD captions of an image) go as one "
        "request with `n`, so the image is encoded and prefilled once; the request is seeded with its first candidate's seed. "
        "An engine that answers with fewer choices gets the rest asked one by one with their own seeds. TGI ignores `n`: always one request per candidate.",
    )
    image_edge: int = Field(
        -1,
        ge=-1,
        description="Served engines: images are resized on the client so that their shorter side is at most this many "
        "pixels before they are sent (less to encode, transfer and decode; the model's processor resizes to its own input anyway). "
        "-1: the sampling model's own input size (its image processor's shortest edge or crop size); 0: send the original bytes.",
    )
    server: ServerConfig = Field(default_factory=lambda: ServerConfig())


class AnnotateConfig(_Section):
    """Step-1 data from a teacher model (`sicog annotate cod`) behind an OpenAI-compatible endpoint."""

    endpoint: str = Field("", description="Base URL of the teacher's server (e.g. http://teacher:8080/v1).")
    served_model: str = Field("", description="The `model` sent with each request (TGI ignores it).")
    temperature: float = Field(0.2, gt=0, description="Paper's teacher temperature: 0.2.")
    max_new_tokens: int = Field(1200, ge=1, description="Reference scripts: 1200.")
    concurrency: int = Field(32, ge=1, description="Requests in flight to the teacher.")
    timeout_s: float = Field(600.0, gt=0, description="Seconds one request may take before it is retried.")
    max_attempts: int = Field(4, ge=1, description="Attempts on 429 / 5xx / timeouts before the record is quarantined.")


class TaskCuration(_Section):
    """Self-consistency selection for one task."""

    similarity: Literal["embedding", "exact", "hybrid"] = Field(
        "embedding", description="embedding = the paper's cosine; exact = normalised answer match; hybrid = exact for short answers."
    )
    threshold: float = Field(0.85, ge=-1, le=1, description="Keep the best candidate if its score reaches this.")
    short_answer_words: int = Field(3, ge=1, description="hybrid: answers of at most this many words use exact match.")


class CurateConfig(_Section):
    """Step 3: self-consistency curation (paper Sec. 3.3)."""

    embedder: str = Field("all-MiniLM-L6-v2", description="sentence-transformers model name or path (paper: NV-Embed-v2).")
    embed_batch_size: int = Field(128, ge=1)
    trust_remote_code: bool = Field(False, description="Let the embedder run its repository's code (the paper's NV-Embed-v2 needs it); off unless asked.")
    scorer: str = Field(
        "",
        description="HOST:PORT of a `sicog serve scorer` service that embeds for the score step (it must serve "
        "`embedder`); empty: embed in-process. `--scorer` and the pipeline's `scorer` parameter set it per run.",
    )
    caption: TaskCuration = Field(default_factory=lambda: TaskCuration(threshold=0.85))
    vqa: TaskCuration = Field(default_factory=lambda: TaskCuration(threshold=0.95))
    text: TaskCuration = Field(default_factory=lambda: TaskCuration(threshold=-1.0))
    conversation_threshold: float = Field(
        0.95,
        description="CoD winners at or above this are converted to 5-turn conversations, one turn per step, in place of "
        "their single-turn record (paper Sec. 3.3: a higher threshold for multi-turn conversations).",
    )
    text_top_k: int = Field(
        50_000,
        ge=0,
        description="Text-only: of the instances that reach curate.text.threshold, keep the top-K by score (paper: "
        "50k text samples in stage 1.5), across every scored input of the curate step; the others are rejected with their reason.",
    )
    sweep: list[float] = Field(
        default_factory=lambda: [round(0.5 + 0.05 * i, 2) for i in range(10)] + [0.97, 0.98, 0.99],
        description="Thresholds at which the report measures keep rate and precision.",
    )


class EvalConfig(_Section):
    """Step 5: the held-out split (always) and public benchmarks through lmms-eval (when listed)."""

    max_new_tokens: int = Field(96, ge=1, description="Greedy decoding budget for held-out answers and captions (and lmms-eval generations).")
    batch_size: int = Field(64, ge=1)
    benchmarks: list[str] = Field(
        default_factory=list,
        description="lmms-eval tasks run on every evaluated model, scored into the same per-model dict as the "
        "held-out metrics (names of sicog.evaluate.benchmarks.BENCHMARKS: mmstar, ai2d, scienceqa_img, pope, mmbench_en_dev, chartqa, "
        "docvqa_val, ocrbench, seedbench, mmvet, mathvista_testmini_format; and sicog_heldout_vqa / sicog_heldout_caption: this "
        "cycle's held-out split through lmms-eval). They run in the eval environment (.venv-eval locally, cluster.eval_image on a "
        "cluster): lmms-eval needs torchvision, which the main environment's torch cannot load. Empty: held-out only.",
    )
    benchmark_limit: int | None = Field(None, ge=1, description="Documents per benchmark (lmms-eval's limit); null: all of them.")
    backend: Literal["llava_hf", "vllm"] = Field(
        "llava_hf",
        description="lmms-eval's model backend for eval.benchmarks: llava_hf (transformers, one request at a time, CPU or GPU) or "
        "vllm (vLLM on the task's GPU, batches of eval.batch_size, in the config's dtype: bf16 in the paper's set-up; the eval image needs vllm).",
    )
    datasets_cache: str = Field(
        "",
        description="The benchmarks' dataset cache (an HF_HOME folder that `sicog eval prefetch` filled): a store URI, fetched by each "
        "evaluate task, or an absolute path where cluster.datasets_pvc is mounted. lmms-eval then runs offline on it, and a benchmark "
        "that is not in it stops the task with one line. Empty: lmms-eval downloads from the Hugging Face Hub itself (where the network allows).",
    )
    judge_endpoint: str = Field(
        "",
        description="OpenAI-compatible base URL of the judge model of judged benchmarks (mmbench_en_dev, mmvet, mathvista_testmini_format), e.g. http://judge:8000/v1.",
    )
    judge_model: str = Field("", description="The judge's model name (lmms-eval's MODEL_VERSION).")
    judge_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the judge's API key; on a cluster it comes from the Secret cluster.judge_secret."
    )

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, benchmarks: list[str]) -> list[str]:
        unknown = [b for b in benchmarks if b not in BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(sorted(BENCHMARKS))}")
        return benchmarks

    @model_validator(mode="after")
    def _judged(self) -> "EvalConfig":
        judged = [b for b in self.benchmarks if b in JUDGED]
        if judged and not (self.judge_endpoint and self.judge_model):
            raise ValueError(f"{judged[0]} is scored by a judge model: set eval.judge_endpoint and eval.judge_model")
        return self


class PromoteConfig(_Section):
    """The promotion gate of recurring cycles: a cycle's model starts the next cycle of its series only
    if its held-out scores do not regress beyond `tolerance` (sicog.lineage.promotion). A refused cycle
    stays in the series, with its reason, and is skipped as a starting point."""

    tolerance: float = Field(
        0.02,
        ge=0,
        description="Largest allowed drop of a held-out score, absolute on the metric's 0-1 scale (a drop of exactly "
        "the tolerance still passes). Every gated metric is higher-is-better. Default 0.02: two points, below the demo's seed-to-seed "
        "spread of held-out scores (README, evidence), so a noisy demo cycle can be refused; size it to the held-out set's noise.",
    )
    metrics: list[str] = Field(
        default_factory=list,
        description="Held-out metrics that gate (names in metrics.json `heldout.<model>`, e.g. vqa_accuracy). "
        "Empty: every metric the cycle model reports, so benchmark metrics added later gate without a config change. A gated "
        "metric the cycle model did not measure refuses it; one its reference lacks is skipped for that reference.",
    )
    against: list[Literal["previous", "base"]] = Field(
        default_factory=lambda: ["previous", "base"],
        description="References: previous = the series' previous promoted cycle's "
        "model (skipped for a series' first cycle), base = this cycle's own base model. Empty: every cycle is promoted.",
    )
    previous: str = Field(
        "",
        description="Store URI of the lineage.json the 'previous' reference is read from; a cycle in a series sets it to the "
        "cycle it starts from (see sicog.lineage). Empty: no previous cycle.",
    )


class Toleration(_Section):
    """A Kubernetes toleration (e.g. the taint a GPU node pool carries)."""

    key: str = Field(..., min_length=1)
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] = "NoSchedule"


class ClusterConfig(_Section):
    """How the compiled pipeline runs on Kubernetes (Kubeflow Pipelines + Kubeflow Trainer).

    Read when the pipeline is compiled and by the train tasks; a local run (`sicog cycle`, kfp.local)
    ignores it. Secrets are never values here: `s3_secret` names an existing Secret.
    """

    trainer: Literal["auto", "trainjob", "pytorchjob", "torchrun"] = Field(
        "auto",
        description="Train tasks: trainjob (one Kubeflow Trainer v2 TrainJob per stage), pytorchjob (one kubeflow.org/v1 "
        "PyTorchJob per stage, for clusters on Training Operator v1), torchrun (inside the task's own pod, train.nproc GPUs); "
        "auto: trainjob in a pipeline compiled for a cluster (torchrun with train.step1 dpo), torchrun in a local run.",
    )
    training_runtime: str = Field(
        "torch-distributed",
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="ClusterTrainingRuntime of the TrainJobs (Kubeflow's torch runtime: torch-distributed).",
    )
    queue: str = Field(
        "",
        pattern=r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$",
        description="Kueue LocalQueue of the TrainJobs (their kueue.x-k8s.io/queue-name label); empty: no label.",
    )
    namespace: str = Field("", description="Namespace of the training jobs; empty: the pipeline pod's own namespace.")
    trainer_image: str = Field(
        "ghcr.io/sicog-project/sicog-trainer:0.1.0",
        description="CUDA image (images/trainer/Dockerfile) of the training job pods and of the pipeline's GPU tasks.",
    )
    eval_image: str = Field(
        "ghcr.io/sicog-project/sicog-eval:0.1.0",
        description="CUDA image with lmms-eval's environment (images/eval/Dockerfile) of the evaluate task when eval.benchmarks is set.",
    )
    datasets_pvc: str = Field(
        "",
        description="A PersistentVolumeClaim holding the benchmarks' dataset cache, mounted read-only in evaluate tasks at eval.datasets_cache "
        "(an absolute path); empty: evaluate tasks fetch eval.datasets_cache from the store.",
    )
    judge_secret: str = Field(
        "", description="Existing Secret holding the judge's API key under the key eval.judge_key_env, exposed as env to the evaluate task."
    )
    nodes: int = Field(
        1, ge=1, description="Training job pods (TrainJob numNodes; PyTorchJob 1 master + nodes-1 workers); train.nproc ranks each (paper scale: 4 x 8 A100)."
    )
    accelerator: str = Field("", description="Extended resource of a GPU (e.g. nvidia.com/gpu); empty: a CPU-only cluster, no GPU requests.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels of GPU tasks and training job pods, e.g. {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations of GPU tasks and training job pods (GPU node pools are usually tainted)."
    )
    cpu: str = Field("8", description="CPU request of each training job pod.")
    memory: str = Field("64Gi", description="Memory request of each training job pod.")
    shm_size: str = Field(
        "64Gi", description="Size of the in-memory /dev/shm of training pods (NCCL and data loader workers need more than the 64 MiB default)."
    )
    s3_secret: str = Field(
        "",
        description="Existing Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, exposed as env to every task and training pod; "
        "empty: pods find S3 credentials through the standard AWS chain (the service account's role: IRSA, EKS Pod Identity), "
        "and training and sampler server pods run as service_account.",
    )
    s3_endpoint: str = Field("", description="SICOG_S3_ENDPOINT of every task and training pod (host:port of MinIO or another S3 API); empty: AWS S3.")
    service_account: str = Field(
        "sicog-pipeline", description="Service account of pipeline runs (the Helm chart grants it TrainJob and PyTorchJob create/watch/delete)."
    )
    job_timeout_s: float = Field(
        7 * 86400.0,
        gt=0,
        description="Overall limit on one training job, from creation to its end (also its activeDeadlineSeconds); past it the job is deleted and the task fails.",
    )
    poll_s: float = Field(30.0, gt=0, description="Seconds between status reads of a running training job.")
    retries: int = Field(
        2, ge=0, description="Retries of transient steps (sampling, collection, scoring, training; training resumes from its last checkpoint)."
    )
    pushgateway: str = Field(
        "",
        description="URL of a Prometheus Pushgateway (e.g. http://prometheus-pushgateway.monitoring.svc:9091) the score "
        "task pushes its per-task counts to (sicog_score_instances, sicog_score_kept; the chart's dashboard); "
        "empty: none (they are in the run's KFP metadata either way).",
    )


class SicogConfig(_Section):
    """A whole SICOG cycle."""

    seed: int = Field(0, description="Cycle seed: candidate seeds derive from (seed, record id, candidate index).")
    cycle: int = Field(1, ge=1, description="Cycle number, recorded in curated provenance.")
    data: DataConfig = Field(default_factory=DataConfig)
    world: WorldConfig = Field(default_factory=WorldConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _check(self) -> "SicogConfig":
        if self.sample.text_candidates < 2 and (self.world.n_pool_text or self.data.catalog):
            raise ValueError("sample.text_candidates: self-consistency needs at least 2 candidates")
        if self.train.step1 == "dpo" and self.cluster.trainer in ("trainjob", "pytorchjob"):
            # The pairs need the warm-up model's answers before any rank trains: not split across a job yet.
            raise ValueError("train.step1: dpo runs with cluster.trainer torchrun only (its pairs are made before training)")
        if self.cluster.datasets_pvc and not self.eval.datasets_cache.startswith("/"):
            raise ValueError("cluster.datasets_pvc: set eval.datasets_cache to the absolute path to mount it at (e.g. /datasets)")
        return self


def for_cluster(config: SicogConfig) -> SicogConfig:
    """The config as a pipeline compiled for a cluster runs it: cluster.trainer auto becomes trainjob
    (torchrun with train.step1 dpo, whose pairs are made in the task). A local run reads auto as torchrun."""
    if config.cluster.trainer != "auto":
        return config
    trainer = "torchrun" if config.train.step1 == "dpo" else "trainjob"
    return config.model_copy(update={"cluster": config.cluster.model_copy(update={"trainer": trainer})})


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "config"
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    return f"config error: {key}: {msg}"


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"config error: override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    # YAML scalars give the natural types: 3 -> int, 0.9 -> float, true -> bool, [a, b] -> list.
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config error: {'.'.join(path)}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SicogConfig:
    """YAML file (optional) + `key.sub=value` overrides -> validated config, or a one-line ConfigError."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config error: no such file: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config error: {p} is not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config error: {p} must hold a mapping")
    data = apply_overrides(data, overrides or [])
    return validate_config(data)


def parameter_dict(config: SicogConfig) -> dict:
    """The config as the pipeline's dict parameter. KFP parameters cannot hold null, so a null that
    is also its field's default is left out: each component validates the dict and gets it back."""

    def strip(model: BaseModel, data: dict) -> dict:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if value is None and field.default is None:
                data.pop(name, None)
            elif isinstance(value, BaseModel):
                strip(value, data[name])
        return data

    return strip(config, config.model_dump(mode="json"))


def validate_config(data: dict) -> SicogConfig:
    try:
        return SicogConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
