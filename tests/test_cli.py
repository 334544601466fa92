"""The step subcommands on user files: `sicog score` reads the candidates contract and writes one
scored line per instance; bad input is a one-line error with a non-zero exit."""

import json

from typer.testing import CliRunner

from sicog.cli import app
from sicog.prompts import format_cot

runner = CliRunner()


def _cand(id_, index, fmt, text):
    return {"id": id_, "task": "vqa", "format": fmt, "index": index, "seed": index, "prompt": "What color is the circle?", "image": "a.png", "text": text, "model": "m"}


def test_score_writes_one_line_per_instance(tmp_path):
    cot = lambda answer: format_cot(["Find the colour.", "A circle.", f"The circle is {answer}.", answer])  # noqa: E731
    rows = [
        _cand("q1", 0, "cot", cot("red")), _cand("q1", 1, "cot", cot("red")), _cand("q1", 2, "da", "Red."),
        _cand("q2", 0, "cot", cot("blue")), _cand("q2", 1, "cot", "not a chain of thought"), _cand("q2", 2, "da", "green"),
        _cand("q3", 0, "cot", "garbage"), _cand("q3", 1, "cot", "garbage"), _cand("q3", 2, "da", "red"),
    ]
    src = tmp_path / "candidates.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[::-1]))  # order must not matter
    out = tmp_path / "scored.jsonl"
    result = runner.invoke(app, ["score", "--in", str(src), "--out", str(out), "--set", "curate.vqa.similarity=exact", "--set", "curate.vqa.threshold=0.9"])
    assert result.exit_code == 0, result.output
    scored = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(scored) == {"q1", "q2"}
    assert scored["q1"]["scores"] == [1.0, 1.0, 1.0] and scored["q1"]["best"] == 0 and scored["q1"]["kept"] is True
    assert scored["q2"]["scores"][1] is None and scored["q2"]["kept"] is False  # malformed CoT is not scored
    rejected = {r["id"]: r["reason"] for r in map(json.loads, (tmp_path / "scored.rejected.jsonl").read_text().splitlines())}
    assert set(rejected) == {"q2", "q3"}


def test_user_errors_are_one_line(tmp_path):
    result = runner.invoke(app, ["score", "--in", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "s.jsonl")])
    assert result.exit_code == 2 and "no such file" in result.output
    result = runner.invoke(app, ["sample", "--task", "poems", "--model", "m", "--world", "w", "--out", "o"])
    assert result.exit_code == 2 and "unknown task" in result.output
