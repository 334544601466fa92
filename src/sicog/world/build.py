"""Build the demo world on disk: images, the LLaVA-format splits, pool ground truth, held-out set.

Each item (image or text prompt) draws from its own `random.Random(f"{seed}:{split}:{index}")`, so
the same seed gives byte-identical files, and changing one split's size leaves every other split
unchanged. Files (image paths are relative to the output directory):

- base.jsonl        DD captions, DA VQA and text-only QA that train the demo's base model
- annotated.jsonl   the small step-1 set: DD + CoD captions, DA + CoT answers of the same images
- pool_images.jsonl, pool_vqa.jsonl, pool_text.jsonl   unlabeled inputs of step 2 (no answers)
- truth.jsonl       ground truth of every pool id, for measuring curation quality
- heldout.jsonl     new images with questions, answers and scenes, for evaluation
- manifest.json     seed, config, row counts and sha256 of every file (written last)
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator
from pathlib import Path

from sicog.config import WorldConfig
from sicog.prompts import COD_PARAPHRASES, DD_PARAPHRASES, all_prompt_texts, cot_question, format_cod, format_cot
from sicog.records import IMAGE_TOKEN, read_jsonl, write_json, write_jsonl
from sicog.world.language import cod_steps, coverage_texts, dd_caption, lexicon, sample_questions, text_qa
from sicog.world.scenes import render_scene, sample_scene

WORLD_VERSION = 1  # bump when the generated content changes for the same seed
QUESTIONS_PER_BASE_IMAGE = 3  # distinct question types per base image
QUESTIONS_PER_HELDOUT_IMAGE = 2
TEXT_SHARE_OF_BASE = 4  # base text-only QA = n_base // 4
FILES = ("base.jsonl", "annotated.jsonl", "pool_images.jsonl", "pool_vqa.jsonl", "pool_text.jsonl", "truth.jsonl", "heldout.jsonl")


def _conv(question: str, answer: str | None = None, image: bool = True) -> list[dict]:
    turns = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}" if image else question}]
    if answer is not None:
        turns.append({"from": "gpt", "value": answer})
    return turns


class _Images:
    """Renders scenes to PNG under images/ and remembers each file's sha256 for the manifest."""

    def __init__(self, out: Path, seed: int, size: int):
        self.out, self.seed, self.size = out, seed, size
        self.hashes: dict[str, str] = {}
        (out / "images").mkdir(parents=True, exist_ok=True)

    def save(self, tag: str, index: int, scene: dict) -> str:
        rel = f"images/w{self.seed}-{tag}-{index:05d}.png"
        buf = io.BytesIO()
        render_scene(scene, self.size).save(buf, format="PNG")
        data = buf.getvalue()
        (self.out / rel).write_bytes(data)
        self.hashes[rel] = hashlib.sha256(data).hexdigest()
        return rel

    def remove_stale(self) -> None:
        # A previous, larger build may have left images that no record points to any more.
        for path in (self.out / "images").glob("*.png"):
            if f"images/{path.name}" not in self.hashes:
                path.unlink()


def build_world(out_dir: str | Path, cfg: WorldConfig, progress=None) -> dict:
    """Generate every split of the world into `out_dir`; returns the manifest (also written)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = _Images(out, cfg.seed, cfg.image_size)
    n_text = cfg.n_base // TEXT_SHARE_OF_BASE
    sizes = {
        "base": cfg.n_base,
        "base text": n_text,
        "annotated": cfg.n_annotated,
        "pool images": cfg.n_pool_images,
        "pool vqa": cfg.n_pool_vqa,
        "pool text": cfg.n_pool_text,
        "heldout": cfg.n_heldout,
    }
    tasks = {k: progress.add_task(f"world: {k}", total=v) for k, v in sizes.items()} if progress else {}

    def items(split: str, n: int) -> Iterator[tuple[int, random.Random]]:
        for i in range(n):
            yield i, random.Random(f"{cfg.seed}:{split}:{i}")
            if progress:
                progress.advance(tasks[split])

    def scene_of(rng: random.Random, labeled: bool = False) -> dict:
        # The labeled splits may be restricted (world.labeled_*: a distribution shift); pools and held-out never are.
        if labeled:
            return sample_scene(rng, cfg.max_objects, cfg.labeled_backgrounds, cfg.labeled_sizes)
        return sample_scene(rng, cfg.max_objects)

    def questions(scene: dict, rng: random.Random, k: int) -> list[dict]:
        return sample_questions(scene, rng, k, cfg.qtypes)

    base: list[dict] = []
    for i, rng in items("base", cfg.n_base):
        scene = scene_of(rng, labeled=True)
        image = images.save("base", i, scene)
        prompt = rng.choice(DD_PARAPHRASES)
        base.append({"id": f"base-{i:05d}-cap", "image": image, "conversations": _conv(prompt, dd_caption(scene, rng)),
                     "meta": {"task": "caption", "format": "dd"}})  # fmt: skip
        for j, q in enumerate(questions(scene, rng, QUESTIONS_PER_BASE_IMAGE)):
            base.append({"id": f"base-{i:05d}-q{j}", "image": image, "conversations": _conv(q["question"], q["answer"]),
                         "meta": {"task": "vqa", "format": "da", "qtype": q["qtype"]}})  # fmt: skip
    for i, rng in items("base text", n_text):
        qa = text_qa(rng)
        base.append({"id": f"base-text-{i:05d}", "conversations": _conv(qa["question"], qa["answer"], image=False),
                     "meta": {"task": "text", "format": "text", "qtype": qa["qtype"]}})  # fmt: skip

    annotated: list[dict] = []
    for i, rng in items("annotated", cfg.n_annotated):
        scene = scene_of(rng, labeled=True)
        image = images.save("ann", i, scene)
        caption = dd_caption(scene, rng)
        steps = cod_steps(scene, rng, caption)
        (q,) = questions(scene, rng, 1)
        stem = f"ann-{i:05d}"
        annotated += [
            {"id": f"{stem}-cap-dd", "image": image, "conversations": _conv(rng.choice(DD_PARAPHRASES), caption),
             "meta": {"task": "caption", "format": "dd"}},
            {"id": f"{stem}-cap-cod", "image": image, "conversations": _conv(rng.choice(COD_PARAPHRASES), format_cod(steps)),
             "meta": {"task": "caption", "format": "cod"}},
            {"id": f"{stem}-q0-da", "image": image, "conversations": _conv(q["question"], q["answer"]),
             "meta": {"task": "vqa", "format": "da", "qtype": q["qtype"]}},
            {"id": f"{stem}-q0-cot", "image": image, "conversations": _conv(cot_question(q["question"]), format_cot(q["cot"])),
             "meta": {"task": "vqa", "format": "cot", "qtype": q["qtype"]}},
        ]  # fmt: skip

    pool_images: list[dict] = []
    pool_vqa: list[dict] = []
    pool_text: list[dict] = []
    truth: list[dict] = []
    for i, rng in items("pool images", cfg.n_pool_images):
        scene = scene_of(rng)
        rid = f"pool-img-{i:05d}"
        pool_images.append({"id": rid, "image": images.save("pool", i, scene)})
        truth.append({"id": rid, "split": "pool_images", "scene": scene, "caption": dd_caption(scene, rng)})
    for i, rng in items("pool vqa", cfg.n_pool_vqa):
        scene = scene_of(rng)
        (q,) = questions(scene, rng, 1)
        rid = f"pool-vqa-{i:05d}"
        pool_vqa.append({"id": rid, "image": images.save("poolvqa", i, scene), "conversations": _conv(q["question"])})
        truth.append({"id": rid, "split": "pool_vqa", "scene": scene, "question": q["question"], "answer": q["answer"], "qtype": q["qtype"]})
    for i, rng in items("pool text", cfg.n_pool_text):
        qa = text_qa(rng)
        rid = f"pool-text-{i:05d}"
        pool_text.append({"id": rid, "conversations": _conv(qa["question"], image=False)})
        truth.append({"id": rid, "split": "pool_text", "question": qa["question"], "answer": qa["answer"], "qtype": qa["qtype"]})

    heldout: list[dict] = []
    for i, rng in items("heldout", cfg.n_heldout):
        scene = scene_of(rng)
        image = images.save("heldout", i, scene)
        for j, q in enumerate(questions(scene, rng, QUESTIONS_PER_HELDOUT_IMAGE)):
            heldout.append({"id": f"heldout-{i:05d}-q{j}", "image": image, "task": "vqa", "question": q["question"],
                            "answer": q["answer"], "qtype": q["qtype"], "scene": scene})  # fmt: skip
        heldout.append({"id": f"heldout-{i:05d}-cap", "image": image, "task": "caption", "scene": scene, "caption": dd_caption(scene, rng)})

    images.remove_stale()
    rows = dict(zip(FILES, (base, annotated, pool_images, pool_vqa, pool_text, truth, heldout)))
    counts, digests = {}, {}
    for name, data in rows.items():
        counts[name] = write_jsonl(out / name, data)
        digests[name] = hashlib.sha256((out / name).read_bytes()).hexdigest()
    image_digest = hashlib.sha256("".join(f"{k} {v}\n" for k, v in sorted(images.hashes.items())).encode()).hexdigest()
    manifest = {
        "world_version": WORLD_VERSION,
        "seed": cfg.seed,
        "config": cfg.model_dump(),
        "counts": counts,
        "images": len(images.hashes),
        "sha256": digests,
        "images_sha256": image_digest,
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def world_texts(out_dir: str | Path) -> Iterator[str]:
    """Every text a model of this world reads or writes, for training its tokenizer.

    The human and gpt turns of the training splits and pools (image marker removed), every prompt
    string, step header and turn question, and fixed-seed coverage texts plus the lexicon (so words of
    templates that a small world happened not to draw are covered too).
    """
    out = Path(out_dir)
    for name in ("base.jsonl", "annotated.jsonl", "pool_vqa.jsonl", "pool_text.jsonl"):
        for rec in read_jsonl(out / name):
            for turn in rec.get("conversations", []):
                yield turn["value"].replace(IMAGE_TOKEN, "").strip()
    yield from all_prompt_texts()
    yield from coverage_texts()
    yield " ".join(lexicon())
