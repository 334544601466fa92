"""Source-record validation: every kind of bad input becomes a quarantine row with a reason."""

import json

from PIL import Image

from sicog.records import read_jsonl, validate_records, write_jsonl


def _rec(id_, image=None, question="<image>\nWhat color is the circle?", answer="red"):
    conv = [{"from": "human", "value": question}]
    if answer is not None:
        conv.append({"from": "gpt", "value": answer})
    rec = {"id": id_, "conversations": conv}
    if image is not None:
        rec["image"] = image
    return rec


def test_bad_records_are_quarantined_with_reasons(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "images/ok.png")
    (tmp_path / "images/corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    Image.new("1", (5000, 5000)).save(tmp_path / "images/bomb.png")  # 25 Mpx in a few KB
    outside = tmp_path.parent / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    lines = [
        json.dumps(_rec("good", "images/ok.png")),
        json.dumps(_rec("text-only", question="What is 2 plus 3?", answer="5")),
        json.dumps(_rec("missing", "images/nope.png")),
        json.dumps(_rec("corrupt", "images/corrupt.png")),
        json.dumps(_rec("bomb", "images/bomb.png")),
        json.dumps(_rec("absolute", str(tmp_path / "images/ok.png"))),
        json.dumps(_rec("escape", "../outside.png")),
        "{not json",
        json.dumps({"id": "noconv", "image": "images/ok.png"}),
        json.dumps(_rec("emptyq", "images/ok.png", question="<image>\n  ")),
        json.dumps(_rec("noanswer", "images/ok.png", answer=None)),
        json.dumps(_rec("good", "images/ok.png")),
    ]
    src = tmp_path / "src.jsonl"
    src.write_text("\n".join(lines) + "\n")
    good, bad = validate_records(src, tmp_path)
    assert [r["id"] for r in good] == ["good", "text-only"]
    reasons = {row.get("id"): row["reason"] for row in bad}
    assert reasons["missing"].startswith("image not found")
    assert reasons["corrupt"].startswith("corrupt image")
    assert "pixel limit" in reasons["bomb"]
    assert "absolute" in reasons["absolute"]
    assert "escapes the data root" in reasons["escape"]
    assert reasons["noconv"] == "no conversations"
    assert reasons["emptyq"] == "empty question"
    assert reasons["noanswer"] == "no answer"
    assert reasons["good"] == "duplicate id"
    assert any(row["reason"].startswith("malformed JSON") and row["line"] == 8 for row in bad)
    assert len(good) + len(bad) == len(lines)


def test_unlabeled_pools_need_no_answer_and_arrays_are_accepted(tmp_path):
    src = tmp_path / "pool.json"
    Image.new("RGB", (8, 8), "red").save(tmp_path / "ok.png")
    pool = [_rec(1, answer=None, question="Tell me a fact about triangles."), {"id": "img", "image": "ok.png"}, {"id": "none"}]
    src.write_text(json.dumps(pool))
    good, bad = validate_records(src, tmp_path, need_answer=False)
    assert [r["id"] for r in good] == ["1", "img"]  # ids become strings
    assert [(r["id"], r["reason"]) for r in bad] == [("none", "no conversations")]
    assert list(read_jsonl(src))[0]["id"] == 1


def test_write_jsonl_is_atomic_and_round_trips(tmp_path):
    rows = [{"id": str(i), "text": "é\nx"} for i in range(3)]
    path = tmp_path / "a/b.jsonl"
    assert write_jsonl(path, rows) == 3
    assert list(read_jsonl(path)) == rows
    assert [p.name for p in path.parent.iterdir()] == ["b.jsonl"]


def test_candidate_rows_are_typed_at_both_ends():
    from sicog.records import Candidate

    row = {"id": 7, "task": "caption", "format": "cod", "index": 1, "seed": 5, "prompt": "p", "image": "a.png", "text": "t", "model": "m"}
    cand = Candidate.from_row({**row, "extra": "ignored"})
    assert cand.id == "7" and cand.image == "a.png" and cand.error is None
    assert cand.to_row() == {**row, "id": "7"}  # no "error" key unless it failed
    failed = Candidate.from_row({**row, "text": None, "error": "image not found"}).to_row()
    assert failed["error"] == "image not found" and failed["text"] is None
    text_only = Candidate.from_row({k: v for k, v in row.items() if k != "image"}).to_row()
    assert "image" not in text_only
    try:
        Candidate.from_row({"id": "z", "task": "text", "format": "text", "text": "t"})
    except ValueError as exc:
        assert "lacks index" in str(exc) and "'z'" in str(exc)
    else:
        raise AssertionError("a candidate without an index was accepted")


def test_scored_and_curated_rows_round_trip():
    from sicog.records import CuratedRecord, Provenance, ScoredRow

    scored = ScoredRow(
        id="a", task="vqa", candidates=[{"index": 0}, {"index": 1}], compared=["x", "x"], scores=[1.0, 1.0], best=0, score=1.0, similarity="exact", kept=True
    )
    assert ScoredRow.from_row(scored.to_row()) == scored
    try:
        ScoredRow.from_row({k: v for k, v in scored.to_row().items() if k != "kept"})
    except ValueError as exc:
        assert "lacks kept" in str(exc)
    else:
        raise AssertionError("a scored row without a keep decision was accepted")
    record = CuratedRecord(
        id="a",
        conversations=[{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}],
        sicog=Provenance(cycle=1, task="text", format="text", index=0, seed=3, score=1.0, scores=[1.0, 1.0], model="m"),
    )
    row = record.to_row()
    assert list(row) == ["id", "conversations", "sicog"] and row["sicog"]["conversation"] is False  # no image: no "image" key
    assert CuratedRecord.from_row(row) == record
