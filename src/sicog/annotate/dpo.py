"""Preference pairs for the DPO variant of SICOG step 1 (paper, DPO variant of the warm-up).

chosen = the curated (annotated) answer; rejected = the model's own answer on a corrupted copy of
the image, so the pair teaches "look at the image": an answer that would also fit a blurred,
recoloured, rotated or half-masked image is dispreferred. One corruption per image, chosen and
parameterised by a generator seeded with (seed, image id): the same seed gives the same pairs.

Corruptions (paper's list; Pillow + numpy only):
- gaussian blur, sigma uniform in [3, 5] (Pillow's GaussianBlur radius is the standard deviation);
- colour jitter: brightness, contrast, saturation factors uniform in [0.2, 1.8] (0.8 each) and a hue
  shift uniform in [-0.2, 0.2] turns, applied in that fixed order;
- horizontal mirror, then rotation by 90 or 270 degrees;
- a random half-plane covering 30% +/- 5% of the pixels, filled with the image's mean colour.

Input: LLaVA records with an image (the first human/gpt turn is the pair); a model directory.
Output: `pairs.jsonl` ({"id", "image", "prompt", "chosen", "rejected", "corruption"}; `image` is the
original, relative to the image root, which DPO trains on), `images/` (the corrupted copies, kept
for inspection) and the counts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from sicog.data.images import open_image
from sicog.generate.seeds import candidate_seed
from sicog.records import IMAGE_TOKEN, write_jsonl

METHODS = ("blur", "jitter", "rotate", "mask")
CORRUPTION_INDEX = -1  # the seed stream of corruptions, apart from any candidate index (>= 0)


def _rng(seed: int, image_id: str) -> np.random.Generator:
    return np.random.default_rng(candidate_seed(seed, image_id, CORRUPTION_INDEX))


def blur(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    sigma = float(rng.uniform(3.0, 5.0))
    return image.filter(ImageFilter.GaussianBlur(radius=sigma)), {"sigma": round(sigma, 4)}


def jitter(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    b, c, s = (float(rng.uniform(0.2, 1.8)) for _ in range(3))
    hue = float(rng.uniform(-0.2, 0.2))
    out = ImageEnhance.Brightness(image).enhance(b)
    out = ImageEnhance.Contrast(out).enhance(c)
    out = ImageEnhance.Color(out).enhance(s)
    hsv = np.array(out.convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(round(hue * 256))) % 256  # hue is an angle: it wraps around
    out = Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    return out, {"brightness": round(b, 4), "contrast": round(c, 4), "saturation": round(s, 4), "hue": round(hue, 4)}


def rotate(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    angle = int(rng.choice([90, 270]))
    return ImageOps.mirror(image).rotate(angle, expand=True), {"angle": angle}


def mask(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Pixels beyond a random line (direction uniform on the circle), cut where `fraction` of them lie."""
    pixels = np.array(image, dtype=np.float64)
    h, w = pixels.shape[:2]
    fraction = float(rng.uniform(0.25, 0.35))
    theta = float(rng.uniform(0, 2 * np.pi))
    ys, xs = np.mgrid[0:h, 0:w]
    proj = (xs - (w - 1) / 2) * np.cos(theta) + (ys - (h - 1) / 2) * np.sin(theta)
    order = np.argsort(-proj, axis=None, kind="stable")  # the `fraction` most advanced along the normal
    covered = np.zeros(h * w, dtype=bool)
    covered[order[: int(round(fraction * h * w))]] = True
    covered = covered.reshape(h, w)
    mean = pixels.reshape(-1, 3).mean(axis=0)
    pixels[covered] = mean
    return Image.fromarray(np.rint(pixels).astype(np.uint8)), {"fraction": round(float(covered.mean()), 4), "angle_rad": round(theta, 4)}


CORRUPTIONS = {"blur": blur, "jitter": jitter, "rotate": rotate, "mask": mask}


def corrupt(image: Image.Image, seed: int, image_id: str, method: str | None = None) -> tuple[Image.Image, str, dict]:
    """(corrupted copy, method, parameters); the method is drawn per image unless given."""
    rng = _rng(seed, image_id)
    drawn = METHODS[int(rng.integers(len(METHODS)))]
    method = method or drawn
    out, params = CORRUPTIONS[method](image.convert("RGB"), rng)
    return out, method, params


def _pair_source(rec: dict) -> tuple[str, str] | None:
    """(prompt without the image marker, chosen answer) of a record's first exchange, or None."""
    conv = rec.get("conversations") or []
    if len(conv) < 2 or conv[0].get("from") != "human" or conv[1].get("from") != "gpt":
        return None
    prompt = conv[0]["value"].replace(IMAGE_TOKEN, "").strip()
    return (prompt, conv[1]["value"]) if prompt and conv[1]["value"].strip() else None


def make_pairs(
    records: list[dict], model_dir: str | Path, image_root: str | Path, out_dir: str | Path, seed: int, max_new_tokens: int, batch_size: int, progress=None
) -> dict:
    """Write out_dir/pairs.jsonl; returns counts (pairs, per method, skipped by reason, rejected == chosen)."""
    from sicog.generate.local import LocalSampler

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    skipped: Counter = Counter()
    methods: Counter = Counter()
    requests, meta = [], {}
    for rec in records:
        source = _pair_source(rec)
        if rec.get("image") is None or source is None:
            skipped["no image or no first exchange"] += 1
            continue
        try:
            bad, method, params = corrupt(open_image(rec["image"], image_root), seed, str(rec["id"]))
        except Exception:  # unreadable image: skipped and counted, never a crash
            skipped["bad image"] += 1
            continue
        name = f"images/{len(requests):06d}.png"  # not the id: ids may hold path characters
        bad.save(out_dir / name)
        methods[method] += 1
        requests.append({"id": str(rec["id"]), "prompt": source[0], "image": name, "seed": 0})
        meta[str(rec["id"])] = {"image": rec["image"], "chosen": source[1], "corruption": {"method": method, **params, "file": name}}
    sampler = LocalSampler(model_dir, out_dir, batch_size=batch_size, max_new_tokens=max_new_tokens)
    rows = []
    for row in sampler.generate(requests, greedy=True, progress=progress):
        if row.get("text") is None:
            skipped["generation failed"] += 1
            continue
        m = meta[row["id"]]
        rows.append(
            {"id": row["id"], "image": m["image"], "prompt": row["prompt"], "chosen": m["chosen"], "rejected": row["text"], "corruption": m["corruption"]}
        )
    rows.sort(key=lambda r: r["id"])
    write_jsonl(out_dir / "pairs.jsonl", rows)
    return {
        "pairs": len(rows),
        "methods": dict(methods),
        "skipped": dict(skipped),
        "rejected_equals_chosen": sum(r["rejected"].strip() == r["chosen"].strip() for r in rows),
    }
