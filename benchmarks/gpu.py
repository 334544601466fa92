"""GPU benchmark: local-sampler output tok/s (batch 1 vs batched) and the MFU of a stage-1.5 step.

Why each measurement (all in one run, on one random-weight model, ratios printed against anchors):
1. Output tokens/s of `LocalSampler` (the in-process sampler of SICOG step 2, with its on-device
   counter-based Gumbel noise) at batch 1 and at batch B (default 64), at the paper's sampling settings
   (configs/paper-qwen2-7b.yaml: temperature 0.7, top_p 0.95), ~1k-token outputs, one 336x336 image
   per request. Step 2 samples 3 candidates per image and prompt, so its cost is decoding throughput.
   Anchors: the paper's HF generate at batch 1 is ~70 tok/s per A100; vLLM ~7,700 and SGLang ~8,800
   output tok/s on Qwen2.5-VL-7B (one GPU, ~1k-token outputs). The anchors come from other set-ups
   (other GPU, a different 7B VLM, other prompts): the ratios to them are a rough guide, not a race.
   Random weights stop at eos at random places, so every sequence is forced to the full length:
   the sampler's own `min_new_tokens` is set equal to `max_new_tokens` (transformers' MinNewTokens
   processor sets the eos logit to -inf until then), as benchmarks/sampling.py does.
2. MFU of one stage-1.5 step (paper: everything trainable, bf16, gradient checkpointing,
   per-device batch 4, lr 2e-5, from the paper config): records of image + caption text at a
   realistic length (default 1,024 tokens: 576 image tokens + prompt + caption), encoded by the
   project's `encode_record` and batched by its `Collator`; forward + backward + AdamW step.
   MFU = model FLOPs per step / step time / peak dense bf16 FLOP/s. Model FLOPs (PaLM's convention;
   the recomputation that checkpointing adds is not counted): 6 x matmul parameters x tokens for the
   LM (its parameters less the input embedding, a lookup) + 12 x layers x width x sequence per token
   for attention; the same for the CLIP tower on its 577 tokens per image and the projector on 576.
   Peak: a table keyed by torch.cuda.get_device_name() (H100/H200 989, A100 312 TFLOP/s), or
   --peak-tflops.
Peak memory (torch.cuda.max_memory_allocated) is reported per phase.

The model: a LLaVA with a CLIP ViT-L/14-336 tower (layer -2 features, CLS dropped: 576 image tokens)
and a Qwen2-7B-shaped LM (hidden 3584, 28 layers, 28 heads, 4 KV heads, MLP 18944, vocabulary
152,064, untied), random weights, built directly on the device in bf16 (no host copy). The tokenizer
is the project's offline byte-level BPE (`sicog.models.train_tokenizer`, ~1k tokens) with its ChatML
template; the LM keeps Qwen2's 152,064 rows, so the sampler's softmax, top-p and noise run over the
real vocabulary (ids past the tokenizer decode to nothing). LocalSampler loads a model folder in fp32
on the CPU; here it is given the built model instead (its `load_model` is swapped for the duration of
its constructor; a folder with config.json and the processor, no weights, satisfies the rest), so
the measured sampler decodes in bf16 (--dtype fp32 measures what `load_model` would give).

A wall-clock budget (--budget-s, default 540 s from start): short probes (two lengths -> fixed cost +
per-token cost) predict the sampling time, and max_new_tokens is scaled down when the full run
would not fit beside the training reserve; training steps are cut the same way. The output says so.
Figures go to --out as JSON after every phase, so a run cut short still leaves what it measured.

Run: on the GPU machine  python benchmarks/gpu.py --out $OUT/gpu.json
     on a CPU (same code path, tiny geometry, < 2 min)  python benchmarks/gpu.py --shape tiny
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
try:  # the GPU machine has no editable install: import sicog from the checkout
    import sicog  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402  (no torchvision needed)

import sicog.generate.local as local_module  # noqa: E402
from sicog.config import load_config  # noqa: E402
from sicog.generate.local import LocalSampler  # noqa: E402
from sicog.generate.plan import plan_requests  # noqa: E402
from sicog.models import CHAT_TEMPLATE, IM_END, IM_START, PAD, num_image_tokens, train_tokenizer  # noqa: E402
from sicog.prompts import CAPTION_COD, CAPTION_DD  # noqa: E402
from sicog.records import IMAGE_TOKEN  # noqa: E402
from sicog.train.data import Collator, encode_record  # noqa: E402
from sicog.train.trainer import set_trainable  # noqa: E402

PAPER_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "paper-qwen2-7b.yaml"
IMAGE_SIZE, PATCH = 336, 14  # CLIP ViT-L/14-336
ANCHORS = {  # output tokens/s
    "paper_hf_generate_batch1_a100": 70.0,
    "vllm_qwen2.5-vl-7b": 7700.0,
    "sglang_qwen2.5-vl-7b": 8800.0,
}
PEAK_BF16_TFLOPS = [("H200", 989.0), ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("A10", 125.0), ("L4", 121.0)]

# Geometries: CLIP ViT-L/14-336 + Qwen2-7B as released, and a tiny one on the same code path.
SHAPES = {
    "paper": dict(
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
        text=dict(
            vocab_size=152_064,
            hidden_size=3584,
            intermediate_size=18_944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=32_768,
            rope_theta=1_000_000.0,
            rms_norm_eps=1e-6,
        ),
        new_tokens=1024,
        probe=(8, 40),
        train_steps=3,
        train_reserve_s=90,
    ),
    "tiny": dict(
        vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
        text=dict(
            vocab_size=2048,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_theta=1_000_000.0,
            rms_norm_eps=1e-6,
        ),
        new_tokens=32,
        probe=(4, 12),
        train_steps=3,
        train_reserve_s=20,
    ),
}
WORDS = "a red circle sits in the top left of the image on a blue background next to green square and small yellow star".split()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def build_processor(vocab_size: int) -> LlavaProcessor:
    """The project's offline tokenizer (byte-level BPE + ChatML with generation marks) + CLIP-336 preprocessing."""
    texts = [CAPTION_COD, CAPTION_DD, " ".join(WORDS)] + [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    tokenizer = train_tokenizer(texts, min(vocab_size, 1024))
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=crop, do_center_crop=True)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def llava_config(shape: str, processor: LlavaProcessor) -> LlavaConfig:
    geometry = SHAPES[shape]
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in (PAD, IM_START, IM_END, IMAGE_TOKEN)}
    if len(tok) > geometry["text"]["vocab_size"]:
        raise ValueError("tokenizer larger than the LM vocabulary")
    vision = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, num_channels=3, **geometry["vision"])
    text = Qwen2Config(tie_word_embeddings=False, bos_token_id=ids[IM_START], eos_token_id=ids[IM_END], pad_token_id=ids[PAD], **geometry["text"])
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids[IMAGE_TOKEN],
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def build_model(config: LlavaConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LlavaForConditionalGeneration:
    """Random weights created where they will live (device 'meta' allocates nothing), in `dtype`."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = config.text_config.eos_token_id, config.text_config.pad_token_id, config.text_config.bos_token_id
    return model.eval()


def param_counts(model) -> dict:
    n = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    lm = n(model.model.language_model) + n(model.lm_head)
    embed = model.model.language_model.embed_tokens.weight.numel()
    return {"lm": lm, "lm_input_embedding": embed, "vision": n(model.model.vision_tower), "projector": n(model.model.multi_modal_projector), "total": n(model)}


def step_flops(model, batch: int, seq: int, images: int) -> float:
    """Model FLOPs of one training step (forward + backward), PaLM's convention (no recompute)."""
    counts = param_counts(model)
    t, v = model.config.text_config, model.config.vision_config
    vision_tokens = (IMAGE_SIZE // PATCH) ** 2 + 1
    lm = 6 * (counts["lm"] - counts["lm_input_embedding"]) * batch * seq + 12 * t.num_hidden_layers * t.hidden_size * seq * batch * seq
    vision = 6 * counts["vision"] * images * vision_tokens + 12 * v.num_hidden_layers * v.hidden_size * vision_tokens * images * vision_tokens
    projector = 6 * counts["projector"] * images * (vision_tokens - 1)
    return float(lm + vision + projector)


@contextlib.contextmanager
def _given_model(model, processor):
    """LocalSampler's constructor gets the built model instead of loading the folder (fp32, CPU)."""
    original = local_module.load_model
    local_module.load_model = lambda path, trust_remote_code=False: (model, processor)
    try:
        yield
    finally:
        local_module.load_model = original


def _sample(sampler: LocalSampler, requests: list[dict], new_tokens: int, device: torch.device) -> tuple[float, int]:
    sampler.max_new_tokens = sampler.min_new_tokens = new_tokens  # forced length: eos suppressed until the end
    sampler.output_tokens = 0
    _sync(device)
    start = time.perf_counter()
    rows = list(sampler.generate(requests))
    _sync(device)
    seconds = time.perf_counter() - start
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        raise RuntimeError(f"sampler error rows: {errors[:2]}")
    return seconds, sampler.output_tokens


def _training_batch(processor, image_root: Path, records: list[dict], seq: int, vocab: int, image_token_id: int, rng) -> dict:
    """Project-encoded records (image + caption), the assistant turn lengthened with random ids to `seq` tokens."""
    features = []
    for rec in records:
        f = encode_record(rec, processor, image_root, max_length=10**6)
        extra = seq - len(f["input_ids"])
        if extra > 0:
            filler = [int(x) for x in rng.integers(0, vocab, extra)]
            filler = [x if x != image_token_id else x + 1 for x in filler]
            end = len(f["input_ids"]) - 2  # before the closing <|im_end|>\n
            f["input_ids"] = f["input_ids"][:end] + filler + f["input_ids"][end:]
            f["labels"] = f["labels"][:end] + filler + f["labels"][end:]
        features.append(f)
    return Collator(processor.tokenizer.pad_token_id)(features)


def _peak_tflops(args, device: torch.device) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if device.type != "cuda":
        return None, "cpu: no peak table"
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"table ({name})"
    return None, f"unknown device {name!r}: pass --peak-tflops"


def main() -> None:
    t0 = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="paper")
    ap.add_argument("--batch", type=int, default=64, help="batched side's batch size (requests = batch)")
    ap.add_argument("--new-tokens", type=int, default=None, help="output tokens per sequence (paper 1024, tiny 32)")
    ap.add_argument("--train-seq", type=int, default=1024, help="tokens per training record (576 image tokens + text)")
    ap.add_argument("--train-batch", type=int, default=None, help="records per step (default: paper pretrain per_device_batch_size)")
    ap.add_argument("--train-steps", type=int, default=None, help="timed training steps (after one warm-up)")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="weights (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--device", default=None, help="default: cuda if available")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s for MFU (default: by device name)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget for the whole run, from start")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--out", default=None, help="write the figures as JSON here (default: stdout only)")
    args = ap.parse_args()

    geometry = SHAPES[args.shape]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    paper = load_config(PAPER_CONFIG)
    stage = paper.train.pretrain
    new_tokens = args.new_tokens or geometry["new_tokens"]
    train_batch = args.train_batch or stage.per_device_batch_size or 4
    train_steps = args.train_steps or geometry["train_steps"]
    deadline = t0 + args.budget_s
    notes: list[str] = []
    result: dict = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "budget_s": args.budget_s,
        "sampling": {
            "temperature": paper.sample.temperature,
            "top_p": paper.sample.top_p,
            "batch": args.batch,
            "requested_new_tokens": new_tokens,
            "forced_length": "min_new_tokens = max_new_tokens (eos suppressed)",
        },
        "anchors_tok_s": ANCHORS,
        "notes": notes,
    }

    def dump() -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    def left() -> float:
        return deadline - time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        processor = build_processor(geometry["text"]["vocab_size"])
        config = llava_config(args.shape, processor)
        start = time.perf_counter()
        model = build_model(config, device, dtype)
        _sync(device)
        result["build_s"] = round(time.perf_counter() - start, 1)
        result["params"] = param_counts(model)
        image_tokens = num_image_tokens(processor)
        result["image_tokens"] = image_tokens
        # LocalSampler reads config.json (is it a LLaVA?) from a folder; the weights are handed over.
        model_dir = tmp / "model"
        config.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
        rng = np.random.default_rng(0)
        records = []
        for i in range(max(args.batch, train_batch)):
            name = f"img{i:04d}.png"
            Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(tmp / "images" / name)
            answer = " ".join(rng.choice(WORDS, 40))
            records.append(
                {
                    "id": f"bench-{i}",
                    "image": name,
                    "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\n{CAPTION_COD}"}, {"from": "gpt", "value": answer}],
                }
            )
        requests = plan_requests(records[: args.batch], "caption", {"cod": 1}, cycle_seed=0)
        dump()

        # 1. Sampling: batch 1 vs batch B, forced to the full length.
        _reset_peak(device)
        with _given_model(model, processor):
            sampler = LocalSampler(
                model_dir,
                tmp / "images",
                batch_size=args.batch,
                temperature=paper.sample.temperature,
                top_p=paper.sample.top_p,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                device=str(device),
            )
        one, many = requests[:1], requests
        prompt_tokens = len(processor.tokenizer(sampler._chat_text(one[0]), add_special_tokens=False)["input_ids"]) + image_tokens - 1
        result["sampling"]["prompt_tokens"] = prompt_tokens
        p1, p2 = geometry["probe"]
        sampling: dict = result["sampling"]
        try:
            sampler.batch_size = args.batch
            _sample(sampler, many, p1, device)  # warm-up: allocator, kernel selection, first-call costs
            sampler.batch_size = 1
            _sample(sampler, one, p1, device)
            fit = {}
            for label, reqs, bs in (("batch1", one, 1), ("batched", many, args.batch)):
                sampler.batch_size = bs
                ta, _ = _sample(sampler, reqs, p1, device)
                tb, _ = _sample(sampler, reqs, p2, device)
                per_token = max(tb - ta, 1e-9) / (p2 - p1)
                fit[label] = (max(ta - per_token * p1, 0.0), per_token)  # (fixed s: prefill etc., s per decoding step)
            sampling["probe_fit_s"] = {k: {"fixed": round(a, 4), "per_step": round(b, 5)} for k, (a, b) in fit.items()}
            reserve = 0.0 if args.skip_train else geometry["train_reserve_s"]
            available = left() - reserve
            fixed = sum(a for a, _ in fit.values())
            per_step = sum(b for _, b in fit.values())
            predicted = 1.15 * (fixed + per_step * new_tokens)
            if predicted > available:
                scaled = int((available / 1.15 - fixed) / per_step) // 16 * 16
                scaled = max(min(scaled, new_tokens), p2)
                notes.append(
                    f"budget: max_new_tokens scaled down {new_tokens} -> {scaled} (predicted {predicted:.0f} s for both sampling runs, "
                    f"{available:.0f} s available beside a {reserve:.0f} s training reserve)"
                )
                new_tokens = scaled
            sampling["new_tokens"] = new_tokens
            dump()
            for label, reqs, bs in (("batch1", one, 1), ("batched", many, args.batch)):
                sampler.batch_size = bs
                seconds, tokens = _sample(sampler, reqs, new_tokens, device)
                sampling[label] = {"batch": bs, "sequences": len(reqs), "tokens": tokens, "seconds": round(seconds, 3), "tok_s": tokens / seconds}
                dump()
            sampling["ratio_batched_to_batch1"] = sampling["batched"]["tok_s"] / sampling["batch1"]["tok_s"]
        except torch.OutOfMemoryError as exc:
            sampling["error"] = f"out of memory: {str(exc).splitlines()[0]}"
        sampling["peak_memory_gib"] = _peak_gib(device)
        del sampler
        dump()

        # 2. One stage-1.5 step: everything trainable, gradient checkpointing, AdamW, per-device batch.
        if not args.skip_train:
            training: dict = {
                "batch": train_batch,
                "seq": args.train_seq,
                "gradient_checkpointing": paper.train.gradient_checkpointing,
                "learning_rate": stage.learning_rate,
                "trainable": stage.trainable,
                "optimizer": "AdamW (states in the weights' dtype)",
            }
            result["training"] = training
            _reset_peak(device)
            try:
                batch = _training_batch(
                    processor, tmp / "images", records[:train_batch], args.train_seq, config.text_config.vocab_size, config.image_token_id, rng
                )
                seq = batch["input_ids"].shape[1]
                training["seq"] = seq
                batch = {k: v.to(device) for k, v in batch.items()}
                batch["pixel_values"] = batch["pixel_values"].to(dtype)
                training["trainable_params"] = set_trainable(model, stage.trainable)
                if paper.train.gradient_checkpointing:
                    if hasattr(model, "activation_checkpointing_enable"):  # what the Trainer calls (transformers >= 5.2x)
                        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                    else:
                        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                model.config.use_cache = False
                model.train()
                params = [p for p in model.parameters() if p.requires_grad]
                optimizer = torch.optim.AdamW(params, lr=stage.learning_rate, weight_decay=stage.weight_decay, fused=device.type == "cuda")

                def step() -> tuple[float, float]:
                    _sync(device)
                    start = time.perf_counter()
                    loss = model(**batch).loss
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    _sync(device)
                    return time.perf_counter() - start, float(loss.detach())

                warm, _ = step()
                training["warmup_step_s"] = round(warm, 3)
                fits = max(1, int(left() / max(warm, 1e-6)))
                if fits < train_steps:
                    notes.append(f"budget: training steps cut {train_steps} -> {fits}")
                    train_steps = fits
                times, losses = [], []
                for _ in range(train_steps):
                    seconds, loss = step()
                    times.append(seconds)
                    losses.append(loss)
                flops = step_flops(model, train_batch, seq, images=train_batch)
                step_s = statistics.median(times)
                peak, source = _peak_tflops(args, device)
                training.update(
                    {
                        "steps": len(times),
                        "step_s": step_s,
                        "step_s_all": [round(t, 4) for t in times],
                        "loss": losses,
                        "tokens_per_step": train_batch * seq,
                        "train_tok_s": train_batch * seq / step_s,
                        "model_tflop_per_step": flops / 1e12,
                        "achieved_tflop_s": flops / step_s / 1e12,
                        "peak_tflop_s": peak,
                        "peak_source": source,
                        "mfu": (flops / step_s / 1e12 / peak) if peak else None,
                    }
                )
                del optimizer
            except torch.OutOfMemoryError as exc:
                training["error"] = f"out of memory: {str(exc).splitlines()[0]}"
            training["peak_memory_gib"] = _peak_gib(device)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    if result["wall_s"] > args.budget_s:
        notes.append(f"over budget: {result['wall_s']:.0f} s > {args.budget_s:.0f} s")
    dump()
    report(result)


def report(r: dict) -> None:
    s, t = r["sampling"], r.get("training", {})
    fmt = lambda x, spec=",.1f": "n/a" if x is None else format(x, spec)  # noqa: E731
    b1 = s.get("batch1", {}).get("tok_s")
    bb = s.get("batched", {}).get("tok_s")
    ratio = lambda x, anchor: "n/a" if x is None else f"{x / anchor:.3f}x"  # noqa: E731
    params = r["params"]
    size = lambda n: f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"  # noqa: E731
    print(
        f"model: {r['shape']} LLaVA (random weights, {r['dtype']}) on {r['device']}: LM {size(params['lm'])}, "
        f"vision {size(params['vision'])}, projector {size(params['projector'])}; built in {r['build_s']} s"
    )
    print(
        f"sampling: T={s['temperature']} top_p={s['top_p']}, prompt {s.get('prompt_tokens')} tokens "
        f"({r['image_tokens']} image), {s.get('new_tokens', s['requested_new_tokens'])} new tokens per sequence, {s['forced_length']}"
    )
    rows = [
        (
            "batch-1 output tok/s",
            fmt(b1),
            f"{ANCHORS['paper_hf_generate_batch1_a100']:,.0f} paper HF generate bs1/A100",
            ratio(b1, ANCHORS["paper_hf_generate_batch1_a100"]),
        ),
        (
            f"batched (bs {s['batch']}) output tok/s",
            fmt(bb),
            f"{ANCHORS['vllm_qwen2.5-vl-7b']:,.0f} vLLM Qwen2.5-VL-7B",
            ratio(bb, ANCHORS["vllm_qwen2.5-vl-7b"]),
        ),
        ("", "", f"{ANCHORS['sglang_qwen2.5-vl-7b']:,.0f} SGLang Qwen2.5-VL-7B", ratio(bb, ANCHORS["sglang_qwen2.5-vl-7b"])),
        ("batched / batch-1", fmt(s.get("ratio_batched_to_batch1"), ".1f") + "x" if s.get("ratio_batched_to_batch1") else "n/a", "", ""),
        ("sampling peak memory GiB", fmt(s.get("peak_memory_gib"), ".1f"), "", ""),
    ]
    if t:
        rows += [
            (f"stage-1.5 step ({t['batch']} x {t['seq']} tok) s", fmt(t.get("step_s"), ".3f"), "", ""),
            ("stage-1.5 achieved TFLOP/s", fmt(t.get("achieved_tflop_s"), ".1f"), f"peak {fmt(t.get('peak_tflop_s'), '.0f')} ({t.get('peak_source', '')})", ""),
            ("stage-1.5 MFU", fmt(t.get("mfu"), ".1%"), "", ""),
            ("training peak memory GiB", fmt(t.get("peak_memory_gib"), ".1f"), "", ""),
        ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"{'figure':<{widths[0]}}  {'value':>{widths[1]}}  {'anchor':<{widths[2]}}  ratio")
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    for key in ("error",):
        if key in s:
            print(f"sampling error: {s[key]}")
        if key in t:
            print(f"training error: {t[key]}")
    for note in r["notes"]:
        print(f"note: {note}")
    print(f"wall time {r['wall_s']} s of a {r['budget_s']:.0f} s budget")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
