"""Step-1 data: the CoD teacher's accept / retry / quarantine logic on canned teacher answers run
through the real parsers, and the LLaVA-CoT -> DA + CoT conversion through the CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from sicog.annotate.cod import accept, annotate_cod, cod_records, teacher_prompt
from sicog.cli import app
from sicog.prompts import CAPTION_COD, CAPTION_DD, COD_HEADERS, COT_HEADERS, format_cod, parse_cod, parse_cot
from sicog.records import read_jsonl

STEPS = [
    "A red circle and a blue square.",
    "The circle is bright red; the square is small.",
    "The circle is above the square.",
    "The background is plain white.",
    "A bright red circle sits above a small blue square on a plain white background.",
]


class CannedTeacher:
    """Answers from a script, per (record id, attempt): stands in for the endpoint only; the prompt,
    seeds, parsing and quarantine under test are the real code."""

    model_name = "teacher-7b"

    def __init__(self, answers: dict):
        self.answers, self.calls = answers, []

    def complete(self, requests, max_tokens, temperature, advance=None):
        self.calls.append([(r["id"], r["index"], r["seed"], temperature, max_tokens) for r in requests])
        rows = []
        for r in requests:
            answer = self.answers[(r["id"], r["index"])]
            rows.append({**r, "text": None, "error": answer[6:]} if answer.startswith("ERROR:") else {**r, "text": answer})
        return rows


def _caption(rid: str) -> dict:
    return {
        "id": rid,
        "image": f"{rid}.png",
        "conversations": [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "A red circle above a blue square."}],
    }


def test_teacher_prompt_carries_guidelines_steps_and_reference():
    prompt = teacher_prompt("  A red circle.  ")
    for k, header in enumerate(COD_HEADERS, start=1):
        assert f"Step {k}: {header}" in prompt
    assert prompt.endswith("Original description:\nA red circle.")
    for word in ("Coverage", "No invented details", "Relevant context", "No inaccuracies"):
        assert word in prompt


def test_accepted_retried_and_quarantined_answers():
    good = format_cod(STEPS)
    teacher = CannedTeacher(
        {
            ("ok", 0): "\n" + good + "\n",  # whitespace around is fine
            ("late", 0): "Sure! Here is the description.\n" + good,  # text before step 1: malformed
            ("late", 1): good,
            ("bad", 0): good.replace("Step 3:", "Step three:"),
            ("bad", 1): "A red circle.",
            ("down", 0): "ERROR:after 4 attempt(s): HTTP 503: overloaded",
        }
    )
    records = [_caption(r) for r in ("ok", "late", "bad", "down")]
    annotated, quarantine = annotate_cod(records, teacher, seed=5, max_new_tokens=1200, temperature=0.2)
    # first pass asks everyone; only the malformed ones are asked again, with a new seed
    assert [c[:2] for c in teacher.calls[0]] == [("ok", 0), ("late", 0), ("bad", 0), ("down", 0)]
    assert [c[:2] for c in teacher.calls[1]] == [("late", 1), ("bad", 1)]
    assert teacher.calls[0][1][2] != teacher.calls[1][0][2]
    assert all(c[3] == 0.2 and c[4] == 1200 for call in teacher.calls for c in call)
    assert [r["id"] for r in annotated] == ["ok-cod", "ok-dd", "late-cod", "late-dd"]
    cod, dd = annotated[0], annotated[1]
    assert parse_cod(cod["conversations"][1]["value"]) == STEPS
    assert cod["conversations"][0]["value"] == f"<image>\n{CAPTION_COD}" and dd["conversations"][0]["value"] == f"<image>\n{CAPTION_DD}"
    assert dd["conversations"][1]["value"] == STEPS[4]  # DD = the step-5 text
    assert cod["meta"] == {"task": "caption", "format": "cod", "source_id": "ok", "teacher": "teacher-7b"} and cod["image"] == "ok.png"
    assert [q["id"] for q in quarantine] == ["bad", "down"]
    bad, down = quarantine
    assert bad["reason"].startswith("after one retry: not 5 well-formed CoD steps") and len(bad["raw"]) == 2
    assert down["reason"] == "teacher request failed: after 4 attempt(s): HTTP 503: overloaded" and down["raw"] == []


def test_accept_and_records_refuse_malformed_steps():
    assert accept({"text": format_cod(STEPS)}) == (STEPS, "")
    steps, why = accept({"text": format_cod(STEPS[:4] + ["x"]).replace("Step 5", "Step 6")})
    assert steps is None and "CoD step 5 is numbered 6" in why
    assert len(cod_records(_caption("a"), STEPS, "t")) == 2


LLAVA_COT = [
    {
        "id": "q1",
        "image": "1.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the circle?\nAnswer the question using a single word or phrase."},
            {
                "from": "gpt",
                "value": "<SUMMARY> Find the colour. </SUMMARY>\n<CAPTION> A red circle. </CAPTION>\n"
                "<REASONING> The circle is red. </REASONING>\n<CONCLUSION> Red </CONCLUSION>",
            },
        ],
    },
    {
        "id": "q2",
        "image": "2.png",
        "conversations": [
            {"from": "human", "value": "<image>\nHow many shapes?"},
            {"from": "gpt", "value": "<SUMMARY> Count. </SUMMARY><CAPTION> Two shapes. </CAPTION><CONCLUSION> 2 </CONCLUSION>"},
        ],
    },
]


def test_annotate_cot_cli_converts_and_quarantines(tmp_path):
    src = tmp_path / "llava_cot.json"
    src.write_text(json.dumps(LLAVA_COT))
    result = CliRunner().invoke(app, ["annotate", "cot", "--in", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = list(read_jsonl((tmp_path / "out" / "annotated.jsonl")))
    assert [r["id"] for r in rows] == ["q1-da", "q1-cot"]
    da, cot = rows
    assert da["conversations"][0]["value"] == "<image>\nWhat colour is the circle?\nAnswer the question using a single word or phrase."
    assert da["conversations"][1]["value"] == "Red"
    assert cot["conversations"][0]["value"] == "<image>\nWhat colour is the circle? Answer the question step-by-step."
    assert parse_cot(cot["conversations"][1]["value"]) == ["Find the colour.", "A red circle.", "The circle is red.", "Red"]
    assert cot["conversations"][1]["value"].startswith(f"Step 1: {COT_HEADERS[0]}\n")
    assert da["meta"]["format"] == "da" and cot["meta"]["format"] == "cot" and cot["meta"]["source_id"] == "q1"
    [q] = list(read_jsonl((tmp_path / "out" / "quarantine.jsonl")))
    assert q["id"] == "q2" and "REASONING" in q["reason"] and '"q2"' in q["raw"]
    # the input is JSONL too; a malformed line is quarantined with its line number, not fatal
    jl = tmp_path / "llava_cot.jsonl"
    jl.write_text(json.dumps(LLAVA_COT[0]) + "\n{not json\n")
    result = CliRunner().invoke(app, ["annotate", "cot", "--in", str(jl), "--out", str(tmp_path / "out2")])
    assert result.exit_code == 0, result.output
    [q] = list(read_jsonl((tmp_path / "out2" / "quarantine.jsonl")))
    assert q["line"] == 2 and q["reason"].startswith("malformed JSON")


def test_annotate_cod_cli_needs_an_endpoint(tmp_path):
    src = tmp_path / "captions.jsonl"
    src.write_text(json.dumps(_caption("a")) + "\n")
    result = CliRunner().invoke(app, ["annotate", "cod", "--in", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "annotate.endpoint is not set" in result.output and "Traceback" not in result.output
