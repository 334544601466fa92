"""Ground-truth measures: answer normalisation, VQA exact match, caption attribute recall, and
curation quality on a hand-built example with known numbers."""

import pytest

from sicog.evaluate.metrics import caption_attribute_recall, curation_quality, normalize_answer, vqa_correct
from sicog.prompts import format_cod, format_cot


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Red", "red"),
        ("The answer is: Three.", "3"),
        ("Answer: two", "2"),
        ("So, the final answer is yes.", "yes"),
        ("A red circle.", "red circle"),
        ("the  Light-Blue   square!", "light blue square"),
        ("3.5", "3.5"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only zero..ten are mapped
        ("A", "a"),  # an article that is the whole answer survives (multiple-choice letters)
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_vqa_correct():
    assert vqa_correct("The answer is Two.", "2")
    assert vqa_correct("red", "Red")
    assert vqa_correct("3", 3)
    assert not vqa_correct("red circle", "red")  # exact match, not containment
    assert not vqa_correct("", "")  # an empty ground truth judges nothing as correct


SCENE = {
    "objects": [
        {"shape": "circle", "color": "red", "size": "large", "position": "left"},
        {"shape": "square", "color": "blue", "size": "small", "position": "right"},
        {"shape": "triangle", "color": "green", "size": "small", "position": "top"},
        {"shape": "box", "color": "light blue", "size": "small", "position": "bottom"},
    ]
}


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("A large red circle, a small blue square, a green triangle and a light blue box.", 1.0),
        ("A Large RED Circle and two blue squares.", 0.5),  # case and plural
        ("A red large circle.", 0.25),  # the object's own size word between colour and shape
        ("A red small circle.", 0.0),  # a size that is not the object's
        ("A circle, a square; something red and something blue.", 0.0),  # colour and shape named apart
        ("Some light   blue boxes.", 0.25),  # multi-word colour, plural -es
        ("A bluesquare and a greentriangle.", 0.0),  # word boundaries
        ("", 0.0),
    ],
)
def test_caption_attribute_recall(caption, expected):
    assert caption_attribute_recall(caption, SCENE) == expected


def test_attribute_recall_needs_objects():
    with pytest.raises(ValueError, match="no objects"):
        caption_attribute_recall("a red circle", {"objects": []})


def _cot(answer):
    return format_cot(["Find the shape.", "A shape is shown.", "It has four corners.", answer])


def _cand(id_, index, fmt, text):
    task = "vqa" if fmt in ("da", "cot") else "caption"
    return {"id": id_, "task": task, "format": fmt, "index": index, "seed": index, "prompt": "p", "image": "i.png", "text": text, "model": "m"}


def test_vqa_curation_quality_on_a_hand_built_example():
    rows = [
        # kept, best correct; candidates correct, correct, wrong
        {
            "id": "q1",
            "task": "vqa",
            "best": 0,
            "score": 0.9,
            "scores": [0.9, 0.9, 0.5],
            "kept": True,
            "candidates": [_cand("q1", 0, "cot", _cot("The answer is red.")), _cand("q1", 1, "cot", _cot("Red")), _cand("q1", 2, "da", "blue")],
        },
        # not kept, best wrong; candidates correct, wrong, malformed (not counted)
        {
            "id": "q2",
            "task": "vqa",
            "best": 1,
            "score": 0.7,
            "scores": [0.6, 0.7, None],
            "kept": False,
            "candidates": [_cand("q2", 0, "da", "square"), _cand("q2", 1, "da", "circle"), _cand("q2", 2, "cot", "Step 9: ?")],
        },
        # kept but without ground truth: counted in kept/total, judged nowhere
        {
            "id": "q3",
            "task": "vqa",
            "best": 0,
            "score": 0.99,
            "scores": [0.99, 0.99],
            "kept": True,
            "candidates": [_cand("q3", 0, "da", "x"), _cand("q3", 1, "da", "x")],
        },
    ]
    truth = {"q1": {"answer": "red"}, "q2": {"answer": "square"}}
    quality = curation_quality(rows, truth, "vqa", [0.5, 0.8, 0.95])
    assert quality == {
        "kept_accuracy": 1.0,
        "selected_accuracy": 0.5,
        "mean_candidate_accuracy": 0.6,  # 3 correct of 5 well-formed
        "kept": 2,
        "total": 3,
        "judged": 2,
        "sweep": [
            {"threshold": 0.5, "keep_rate": 1.0, "precision": 0.5},
            {"threshold": 0.8, "keep_rate": 0.5, "precision": 1.0},
            {"threshold": 0.95, "keep_rate": 0.0, "precision": None},
        ],
    }


def test_caption_curation_quality_uses_the_compared_text():
    scene = {"objects": [{"shape": "circle", "color": "red", "size": "large"}, {"shape": "square", "color": "blue", "size": "small"}]}
    # CoD steps 1-4 name both objects, step 5 only the circle: only step 5 counts (recall 0.5)
    cod = format_cod(["A red circle and a blue square.", "Sizes differ.", "Side by side.", "Nothing else.", "A red circle."])
    rows = [
        {
            "id": "c1",
            "task": "caption",
            "best": 0,
            "score": 0.8,
            "scores": [0.8, 0.7, 0.6],
            "kept": False,
            "candidates": [_cand("c1", 0, "cod", cod), _cand("c1", 1, "dd", "A red circle and a blue square."), _cand("c1", 2, "dd", "Nothing here.")],
        }
    ]
    quality = curation_quality(rows, {"c1": {"scene": scene}}, "caption", [0.75])
    assert quality["kept_attribute_recall"] is None  # nothing kept
    assert quality["selected_attribute_recall"] == 0.5
    assert quality["mean_candidate_attribute_recall"] == 0.5  # (0.5 + 1 + 0) / 3
    assert (quality["kept"], quality["total"]) == (0, 1)
    assert quality["sweep"] == [{"threshold": 0.75, "keep_rate": 1.0, "precision": 0.5}]


def test_text_curation_quality_counts_only():
    rows = [{"id": "t1", "task": "text", "kept": True}, {"id": "t2", "task": "text", "kept": False}]
    assert curation_quality(rows, {}, "text", [0.5]) == {"kept": 1, "total": 2}
    with pytest.raises(ValueError, match="unknown task"):
        curation_quality(rows, {}, "audio", [])
