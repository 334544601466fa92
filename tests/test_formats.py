"""CoD / CoT formats: exact round trips, strict parsing, LLaVA-CoT conversion, compared texts."""

from __future__ import annotations

import copy

import pytest

from sicog.prompts import (
    CAPTION_COD,
    CAPTION_DD,
    COD_HEADERS,
    COD_PARAPHRASES,
    COD_TURN_QUESTIONS,
    COT_HEADERS,
    COT_SUFFIX,
    DD_PARAPHRASES,
    SHORT_SUFFIX,
    FormatError,
    cod_conversation,
    compared_text,
    convert_llava_cot_record,
    cot_question,
    da_question,
    final_answer,
    format_cod,
    format_cot,
    llava_cot_steps,
    parse_cod,
    parse_cot,
    steps_to_llava_cot,
)

COD = [
    "Three shapes on a white background.",
    "The circle is large and red.\nThe square is small.",
    "The circle is to the left of the square.",
    "There is no border.",
    "A large red circle in the top left.\n\nA second paragraph: a small blue square in the center.",
]
COT = ["The question asks for a colour.", "There is a red circle.", "The circle is red, so red.", "red"]


def test_prompt_strings_are_the_papers():
    assert CAPTION_DD == "Please generate a detailed caption of this image. Be as descriptive as possible."
    assert CAPTION_COD == "Please generate a detailed caption of this image. Describe the image step-by-step."
    assert DD_PARAPHRASES[0] == CAPTION_DD and COD_PARAPHRASES[0] == CAPTION_COD
    assert "Please provide a thorough description of this image." in DD_PARAPHRASES
    # The prompt alone must tell the formats apart.
    assert all("step" in p for p in COD_PARAPHRASES) and not any("step" in p for p in DD_PARAPHRASES)
    assert COT_SUFFIX == "Answer the question step-by-step."
    assert SHORT_SUFFIX == "Answer the question using a single word or phrase."
    assert len(COD_HEADERS) == 5 and len(COT_HEADERS) == 4 and len(COD_TURN_QUESTIONS) == 5
    assert COD_HEADERS[4] == "Organize all observations into a detailed, cohesive description."
    assert COT_HEADERS[3] == "Conclude the task with an answer."
    assert COD_TURN_QUESTIONS[3] == "Is there anything in the margins or borders of the image worth noting?"


def test_cod_layout_and_round_trip():
    text = format_cod(COD)
    assert text.startswith(f"Step 1: {COD_HEADERS[0]}\n{COD[0]}\n\nStep 2: {COD_HEADERS[1]}\n")
    assert text.endswith(f"Step 5: {COD_HEADERS[4]}\n{COD[4]}")
    assert parse_cod(text) == COD
    assert format_cod(parse_cod(text)) == text


def test_cot_layout_and_round_trip():
    text = format_cot(COT)
    assert text == "\n\n".join(f"Step {k}: {h}\n{s}" for k, (h, s) in enumerate(zip(COT_HEADERS, COT), start=1))
    assert parse_cot(text) == COT


def test_parse_tolerates_whitespace_between_steps():
    text = "\n  " + format_cod(COD).replace("\n\nStep 3", "\n\n\n\nStep 3").replace(COD_HEADERS[1], COD_HEADERS[1] + "  ") + "\n\n"
    assert parse_cod(text) == COD


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.split("\n\nStep 5:")[0],  # 4 steps
        lambda t: t + "\n\nStep 6: More.\nextra",  # 6 steps
        lambda t: t.replace("Step 2:", "Step 3:", 1),  # misnumbered
        lambda t: t.replace(COD_HEADERS[2], COD_HEADERS[2].lower()),  # wrong header
        lambda t: t.replace(COD_HEADERS[0], COD_HEADERS[1], 1),  # header of another step
        lambda t: "Here is my caption.\n" + t,  # text before step 1
        lambda t: t.replace(f"{COD_HEADERS[3]}\n{COD[3]}", f"{COD_HEADERS[3]}\n   "),  # empty step
        lambda t: t.replace(f"{COD_HEADERS[0]}\n", f"{COD_HEADERS[0]} "),  # text on the header line
        lambda t: "",
    ],
)
def test_parse_cod_rejects_malformed(mutate):
    with pytest.raises(FormatError):
        parse_cod(mutate(format_cod(COD)))


def test_parse_cot_rejects_cod_and_vice_versa():
    with pytest.raises(FormatError):
        parse_cot(format_cod(COD))
    with pytest.raises(FormatError):
        parse_cod(format_cot(COT))


def test_format_refuses_what_would_not_round_trip():
    with pytest.raises(FormatError):
        format_cod(COD[:4])
    with pytest.raises(FormatError):
        format_cot([*COT[:3], "  "])
    with pytest.raises(FormatError):
        format_cot([COT[0], "Step 2: sneaky\nline", COT[2], COT[3]])
    with pytest.raises(FormatError):
        format_cod("abcde")


def test_cod_conversation():
    turns = cod_conversation(COD)
    assert [t["from"] for t in turns] == ["human", "gpt"] * 5
    assert turns[0]["value"] == f"<image>\n{COD_TURN_QUESTIONS[0]}"
    assert [t["value"] for t in turns[2::2]] == COD_TURN_QUESTIONS[1:]
    assert [t["value"] for t in turns[1::2]] == COD
    with pytest.raises(FormatError):
        cod_conversation(COD[:3])


TAGGED = (
    "<SUMMARY> I will find the colour of the circle. </SUMMARY>\n\n"
    "<CAPTION> A red circle on a white background. </CAPTION>\n\n"
    "<REASONING> The circle is filled with red. </REASONING>\n\n"
    "<CONCLUSION> red </CONCLUSION>"
)
STEPS = ["I will find the colour of the circle.", "A red circle on a white background.", "The circle is filled with red.", "red"]


def test_llava_cot_tags_round_trip():
    assert llava_cot_steps(TAGGED) == STEPS
    assert steps_to_llava_cot(STEPS) == TAGGED
    assert llava_cot_steps(steps_to_llava_cot(STEPS)) == STEPS
    with pytest.raises(FormatError):
        llava_cot_steps(TAGGED.replace("<REASONING>", "<REASON>"))
    with pytest.raises(FormatError):
        llava_cot_steps(TAGGED + "<CONCLUSION> blue </CONCLUSION>")
    with pytest.raises(FormatError):
        llava_cot_steps(TAGGED.replace("<CONCLUSION> red </CONCLUSION>", "<CONCLUSION> </CONCLUSION>"))


def test_question_suffixes():
    q = "<image>\nWhat colour is the circle?"
    assert cot_question(q) == f"{q} {COT_SUFFIX}"
    assert cot_question(f"{q}\n{SHORT_SUFFIX}") == f"{q} {COT_SUFFIX}"
    assert cot_question(f"{q} {COT_SUFFIX}") == f"{q} {COT_SUFFIX}"  # never appended twice
    assert da_question(f"{q} {COT_SUFFIX}") == q
    assert da_question(f"{q}\n{SHORT_SUFFIX}") == f"{q}\n{SHORT_SUFFIX}"  # DA keeps the rest as is
    # Multiple-choice layout inside the question survives.
    mc = "<image>\nWhich one?\nA. red\nB. blue"
    assert cot_question(f"{mc}\n{SHORT_SUFFIX}") == f"{mc} {COT_SUFFIX}"


def test_convert_llava_cot_record_exact_and_pure():
    rec = {
        "id": "llava-cot-7",
        "image": "coco/0001.jpg",
        "conversations": [
            {"from": "human", "value": f"<image>\nWhat colour is the circle?\n{SHORT_SUFFIX}"},
            {"from": "gpt", "value": TAGGED},
            {"from": "human", "value": "And the square?"},
            {"from": "gpt", "value": TAGGED.replace("red", "blue")},
        ],
    }
    before = copy.deepcopy(rec)
    da, cot = convert_llava_cot_record(rec)
    assert rec == before  # the reference script's in-place bug is not repeated
    assert da == {
        "id": "llava-cot-7-da",
        "image": "coco/0001.jpg",
        "conversations": [
            {"from": "human", "value": f"<image>\nWhat colour is the circle?\n{SHORT_SUFFIX}"},
            {"from": "gpt", "value": "red"},
            {"from": "human", "value": "And the square?"},
            {"from": "gpt", "value": "blue"},
        ],
    }
    assert cot == {
        "id": "llava-cot-7-cot",
        "image": "coco/0001.jpg",
        "conversations": [
            {"from": "human", "value": f"<image>\nWhat colour is the circle? {COT_SUFFIX}"},
            {"from": "gpt", "value": format_cot(STEPS)},
            {"from": "human", "value": f"And the square? {COT_SUFFIX}"},
            {"from": "gpt", "value": format_cot([s.replace("red", "blue") for s in STEPS])},
        ],
    }
    # The outputs share no structure with each other or with the input.
    da["conversations"][1]["value"] = "changed"
    assert cot["conversations"][1]["value"] == format_cot(STEPS) and rec == before
    bad = copy.deepcopy(rec)
    bad["conversations"][3]["value"] = "<SUMMARY> x </SUMMARY> blue"
    with pytest.raises(FormatError):
        convert_llava_cot_record(bad)


def test_compared_text_and_final_answer():
    assert compared_text("cod", format_cod(COD)) == COD[4]
    assert compared_text("cot", format_cot(COT)) == "red"
    for fmt in ("dd", "da", "text"):
        assert compared_text(fmt, "  a whole answer\n") == "a whole answer"
    assert final_answer("cot", format_cot(COT)) == "red"
    assert final_answer("da", " red ") == "red"
    with pytest.raises(FormatError):
        compared_text("cod", "a plain caption")
    with pytest.raises(FormatError):
        final_answer("cot", "red")
    with pytest.raises(ValueError, match="valid"):
        compared_text("xyz", "text")
