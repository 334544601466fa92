"""The step subcommands on user files: `sicog score` reads the candidates contract and writes one
scored line per instance into the folder `sicog curate --scored` reads, locally or on S3; bad input
is a one-line error with a non-zero exit."""

import json

import pytest
from typer.testing import CliRunner

from sicog import store
from sicog.cli import app
from sicog.prompts import format_cot
from sicog.records import jsonl_lines

runner = CliRunner()


def _cand(id_, index, fmt, text):
    return {
        "id": id_,
        "task": "vqa",
        "format": fmt,
        "index": index,
        "seed": index,
        "prompt": "What color is the circle?",
        "image": "a.png",
        "text": text,
        "model": "m",
    }


def _cot(answer):
    return format_cot(["Find the colour.", "A circle.", f"The circle is {answer}.", answer])


ROWS = [
    _cand("q1", 0, "cot", _cot("red")),
    _cand("q1", 1, "cot", _cot("red")),
    _cand("q1", 2, "da", "Red."),
    _cand("q2", 0, "cot", _cot("blue")),
    _cand("q2", 1, "cot", "not a chain of thought"),
    _cand("q2", 2, "da", "green"),
    _cand("q3", 0, "cot", "garbage"),
    _cand("q3", 1, "cot", "garbage"),
    _cand("q3", 2, "da", "red"),
]
EXACT = ["--set", "curate.vqa.similarity=exact", "--set", "curate.vqa.threshold=0.9"]
TRUTH = [{"id": "q1", "answer": "red"}, {"id": "q2", "answer": "blue"}, {"id": "q3", "answer": "red"}]


def _lines(text):
    return [json.loads(line) for line in jsonl_lines(text) if line.strip()]


def test_score_writes_one_line_per_instance(tmp_path):
    src = tmp_path / "candidates.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS[::-1]))  # order must not matter
    out = tmp_path / "scored"
    result = runner.invoke(app, ["score", "--in", str(src), "--out", str(out), *EXACT])
    assert result.exit_code == 0, result.output
    scored = {r["id"]: r for r in _lines((out / "scored.jsonl").read_text())}
    assert set(scored) == {"q1", "q2"}
    assert scored["q1"]["scores"] == [1.0, 1.0, 1.0] and scored["q1"]["best"] == 0 and scored["q1"]["kept"] is True
    assert scored["q2"]["scores"][1] is None and scored["q2"]["kept"] is False  # malformed CoT is not scored
    rejected = {r["id"]: r["reason"] for r in _lines((out / "rejected.jsonl").read_text())}
    assert set(rejected) == {"q2", "q3"}
    # A folder of candidates (a `sicog sample` output) is read too.
    result = runner.invoke(app, ["score", "--in", str(tmp_path), "--out", str(tmp_path / "again"), *EXACT])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again/scored.jsonl").read_text() == (out / "scored.jsonl").read_text()


@pytest.mark.parametrize("name", ["scored", "scored.jsonl"])
def test_score_output_is_what_curate_reads(tmp_path, name):
    """`--out` a folder (scored.jsonl + rejected.jsonl) or a NAME.jsonl (+ NAME.rejected.jsonl): curate reads either."""
    src = tmp_path / "candidates.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "world").mkdir()
    (tmp_path / "world/truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TRUTH))
    result = runner.invoke(app, ["score", "--in", str(src), "--out", str(tmp_path / name), *EXACT])
    assert result.exit_code == 0, result.output
    if name == "scored":
        assert {"scored.jsonl", "rejected.jsonl"} <= {p.name for p in (tmp_path / name).iterdir()}
    else:
        assert sorted(p.name for p in tmp_path.glob("scored*")) == ["scored.jsonl", "scored.rejected.jsonl"]
    result = runner.invoke(app, ["curate", "--world", str(tmp_path / "world"), "--scored", str(tmp_path / name), "--out", str(tmp_path / "curated"), *EXACT])
    assert result.exit_code == 0, result.output
    (curated,) = _lines((tmp_path / "curated/curated.jsonl").read_text())
    assert curated["id"] == "q1" and curated["conversations"][1]["value"] == _cot("red")
    assert {r["id"] for r in _lines((tmp_path / "curated/rejected.jsonl").read_text())} == {"q2", "q3"}


def test_score_and_curate_on_s3(bucket, tmp_path):
    base = f"s3://{bucket}/run"
    store.write_text(f"{base}/cand/candidates.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "world").mkdir()
    (tmp_path / "world/truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TRUTH))
    result = runner.invoke(app, ["score", "--in", f"{base}/cand/candidates.jsonl", "--out", f"{base}/scored", *EXACT])
    assert result.exit_code == 0, result.output
    assert {"scored.jsonl", "rejected.jsonl", "_manifest.json"} <= set(store.list_files(f"{base}/scored"))
    assert [r["id"] for r in _lines(store.read_text(f"{base}/scored/scored.jsonl"))] == ["q1", "q2"]
    result = runner.invoke(app, ["curate", "--world", str(tmp_path / "world"), "--scored", f"{base}/scored", "--out", f"{base}/curated", *EXACT])
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in _lines(store.read_text(f"{base}/curated/curated.jsonl"))] == ["q1"]
    # The file form on S3 too: NAME.jsonl and NAME.rejected.jsonl objects.
    result = runner.invoke(app, ["score", "--in", f"{base}/cand/candidates.jsonl", "--out", f"{base}/s.jsonl", *EXACT])
    assert result.exit_code == 0, result.output
    assert {"s.jsonl", "s.rejected.jsonl"} <= set(store.list_files(base))
    result = runner.invoke(app, ["curate", "--world", str(tmp_path / "world"), "--scored", f"{base}/s.jsonl", "--out", str(tmp_path / "c2"), *EXACT])
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in _lines((tmp_path / "c2/curated.jsonl").read_text())] == ["q1"]


def test_user_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["score", "--in", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "no such file" in result.output and not (tmp_path / "s").exists()
    (tmp_path / "w").mkdir()
    (tmp_path / "w/truth.jsonl").write_text("")
    (tmp_path / "lone.jsonl").write_text("")
    result = runner.invoke(app, ["curate", "--world", str(tmp_path / "w"), "--scored", str(tmp_path / "lone.jsonl"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "lone.rejected.jsonl" in "".join(result.output.split())
    result = runner.invoke(app, ["sample", "--task", "poems", "--model", "m", "--world", "w", "--out", "o"])
    assert result.exit_code == 2 and "unknown task" in result.output


def test_oracle_without_ground_truth_is_refused_before_any_task(tmp_path):
    """--oracle trains on the pool's true labels: a catalog without a truth role is one line, exit 2, nothing run."""
    (tmp_path / "catalog.yaml").write_text("instruct: {uri: instruct.jsonl}\npool_vqa: {uri: pool.jsonl}\n")
    result = runner.invoke(app, ["cycle", "--set", f"data.catalog={tmp_path / 'catalog.yaml'}", "--oracle", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "no `truth` role" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
