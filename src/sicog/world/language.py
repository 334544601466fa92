"""Text of the demo world, generated from scene ground truth: captions, CoD steps, VQA, text-only QA.

Every sentence is a template filled from the scene, so each caption and answer is true by
construction and can be checked against the scene. Templates are chosen with the caller's seeded rng
(paraphrase variety without losing determinism). The conventions the rest of the project relies on:
- every caption names each object as `<size> <color> <shape>` (held-out attribute recall looks for
  `<color> <shape>`);
- short answers are one lowercase word or a digit string: a colour, a shape, a position, "yes"/"no",
  a count; the CoT step-4 conclusion is exactly that short answer;
- the DD caption of an image is the text of its CoD step 5.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from sicog.world.scenes import BACKGROUNDS, COLORS, CORNERS, POSITIONS, SHAPES, SIZES, sample_scene

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth"]
QTYPES = ("color", "shape", "count", "exist", "position", "background")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "middle", "right")


# ----------------------------------------------------------------------------- small helpers
def _join(items: list[str]) -> str:
    """English list: "a", "a and b", "a, b and c"."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _plural(word: str, n: int) -> str:
    return word if n == 1 else word + "s"


def _count_words(n: int, noun: str) -> str:
    return f"{NUMBER_WORDS[n]} {_plural(noun, n)}"


def full_name(obj: dict) -> str:
    """The canonical object phrase, e.g. "large red circle"."""
    return f"{obj['size']} {obj['color']} {obj['shape']}"


def position_phrase(position: str) -> str:
    """ "top left" -> "in the top left", "top" -> "at the top", "left" -> "on the left"."""
    if position == "center":
        return "in the center"
    if position in ("top", "bottom"):
        return f"at the {position}"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"in the {position}"


def _grid(position: str) -> tuple[int, int]:
    idx = POSITIONS.index(position)
    return idx // 3, idx % 3


def _listing(objects: list[dict]) -> str:
    return _join([f"a {full_name(o)} {position_phrase(o['position'])}" for o in objects])


# ----------------------------------------------------------------------------- captions
def dd_caption(scene: dict, rng: random.Random) -> str:
    """The detailed description (DD): background, every object with size/colour/shape/position, periphery."""
    objs, bg = scene["objects"], scene["background"]
    n = len(objs)
    count = _count_words(n, "shape")
    form = rng.randrange(4)
    if form == 0:
        body = f"The image shows {count} on a {bg} background: {_listing(objs)}."
    elif form == 1:
        verb = "is" if n == 1 else "are"
        body = f"On a {bg} background there {verb} {count}: {_listing(objs)}."
    elif form == 2:
        body = f"This picture has a {bg} background with {count}: {_listing(objs)}."
    else:
        each = " ".join(f"A {full_name(o)} is {position_phrase(o['position'])}." for o in objs)
        body = f"The image has a {bg} background and {count}. {each}"
    sentences = [body]
    if scene["border"] is not None:
        c = scene["border"]
        sentences.append(rng.choice([
            f"{_cap(_article(c))} {c} border frames the image.",
            f"The image is framed by {_article(c)} {c} border.",
            f"A thin {c} border runs along the edges.",
        ]))  # fmt: skip
    if scene["badge"] is not None:
        c, corner = scene["badge"]["color"], scene["badge"]["corner"]
        sentences.append(rng.choice([
            f"A small {c} badge sits in the {corner} corner.",
            f"In the {corner} corner there is a small {c} badge.",
            f"The {corner} corner holds a small {c} badge.",
        ]))  # fmt: skip
    return " ".join(sentences)


def _shape_summary(objects: list[dict]) -> str:
    counts = Counter(o["shape"] for o in objects)  # insertion order = first appearance
    return _join([f"a {s}" if k == 1 else _count_words(k, s) for s, k in counts.items()])


def _references(objects: list[dict]) -> list[str]:
    """ "the circle" when the shape is unique, else "the first circle", "the second circle", ..."""
    counts = Counter(o["shape"] for o in objects)
    seen: Counter = Counter()
    refs = []
    for o in objects:
        if counts[o["shape"]] == 1:
            refs.append(f"the {o['shape']}")
        else:
            refs.append(f"the {ORDINALS[seen[o['shape']]]} {o['shape']}")
            seen[o["shape"]] += 1
    return refs


def _relation(a: dict, b: dict) -> tuple[str, str]:
    """(a relative to b, b relative to a); a precedes b in reading order."""
    (ra, ca), (rb, cb) = _grid(a["position"]), _grid(b["position"])
    if ra == rb:
        return "to the left of", "to the right of"
    if ca == cb:
        return "above", "below"
    side, other = ("left", "right") if ca < cb else ("right", "left")
    return f"above and to the {side} of", f"below and to the {other} of"


def cod_steps(scene: dict, rng: random.Random, caption: str) -> list[str]:
    """The five CoD step texts; step 5 is `caption` (the image's DD caption) unchanged."""
    objs, bg = scene["objects"], scene["background"]
    n = len(objs)
    shapes = _shape_summary(objs)
    count = _count_words(n, "shape")
    s1 = rng.choice([
        f"The image is defined by {count} on a {bg} background: {shapes}.",
        f"The key content is {count} on a {bg} background: {shapes}.",
        f"The main {_plural('element', n)} of the image {'is' if n == 1 else 'are'} {shapes}, shown on a {bg} background.",
    ])  # fmt: skip

    frame = rng.randrange(3)
    clauses = []
    for ref, o in zip(_references(objs), objs):
        if frame == 0:
            clauses.append(f"{ref} is {o['size']} and {o['color']}")
        elif frame == 1:
            clauses.append(f"{ref} is {o['color']} and {o['size']}")
        else:
            clauses.append(f"{ref} is a {o['size']} {o['color']} one")
    s2 = _cap(_join(clauses)) + "."

    verb = rng.choice(["is", "sits", "lies"])
    placed = _join([f"the {o['color']} {o['shape']} {verb} {position_phrase(o['position'])}" for o in objs])
    if n == 1:
        o = objs[0]
        s3 = f"The {o['color']} {o['shape']} is the only shape and {verb} {position_phrase(o['position'])}."
    else:
        a, b = objs[0], objs[1]
        ab, ba = _relation(a, b)
        rel = (
            f"The {a['color']} {a['shape']} is {ab} the {b['color']} {b['shape']}."
            if rng.random() < 0.5
            else f"The {b['color']} {b['shape']} is {ba} the {a['color']} {a['shape']}."
        )
        s3 = f"{_cap(placed)}. {rel}"

    border, badge = scene["border"], scene["badge"]
    if border and badge:
        c, corner = badge["color"], badge["corner"]
        s4 = rng.choice([
            f"{_cap(_article(border))} {border} border frames the image, and a small {c} badge sits in the {corner} corner.",
            f"The edges carry {_article(border)} {border} border, and the {corner} corner holds a small {c} badge.",
        ])  # fmt: skip
    elif border:
        s4 = rng.choice([
            f"{_cap(_article(border))} {border} border frames the image, and there is no badge in the corners.",
            f"The image has {_article(border)} {border} border but no corner badge.",
        ])  # fmt: skip
    elif badge:
        c, corner = badge["color"], badge["corner"]
        s4 = rng.choice([
            f"There is no border, but a small {c} badge sits in the {corner} corner.",
            f"The image has no border; the {corner} corner holds a small {c} badge.",
        ])  # fmt: skip
    else:
        s4 = rng.choice([
            "There is no border and no badge in the corners.",
            "The margins are empty: no border and no corner badge.",
        ])  # fmt: skip
    return [s1, s2, s3, s4, caption]


# ----------------------------------------------------------------------------- VQA
def _unique_refs(objs: list[dict], key: str) -> list[tuple[dict, str]]:
    """(object, reference) pairs where `key` ("shape" or "color") alone, or size + key, is unique."""
    out = []
    for o in objs:
        if sum(p[key] == o[key] for p in objs) == 1:
            out.append((o, o[key]))
        elif sum(p[key] == o[key] and p["size"] == o["size"] for p in objs) == 1:
            out.append((o, f"{o['size']} {o[key]}"))
    return out


def available_qtypes(scene: dict) -> list[str]:
    """Question types that have a unique correct answer for this scene."""
    unique = {"color": bool(_unique_refs(scene["objects"], "shape")), "shape": bool(_unique_refs(scene["objects"], "color"))}
    return [t for t in QTYPES if unique.get(t, True)]


def make_question(scene: dict, rng: random.Random, qtype: str) -> dict:
    """{"qtype", "question", "answer", "cot": [4 step texts]} with cot[3] == answer."""
    objs = scene["objects"]
    if qtype == "color":
        target, ref = rng.choice(_unique_refs(objs, "shape"))
        the = f"the {ref}"
        question = rng.choice([f"What color is {the}?", f"What is the color of {the}?", f"Which color does {the} have?"])
        answer = target["color"]
        same = [o for o in objs if o["shape"] == target["shape"]]
        cot = [
            rng.choice([f"The question asks for the color of {the}.", f"I need to find which color {the} has."]),
            f"The image shows {_listing(same)}.",
            f"{_cap(the)} is the {full_name(target)} {position_phrase(target['position'])}, so its color is {answer}.",
        ]
    elif qtype == "shape":
        target, ref = rng.choice(_unique_refs(objs, "color"))
        the = f"the {ref} object"
        question = rng.choice([f"What shape is {the}?", f"What is the shape of {the}?", f"Which shape does {the} have?"])
        answer = target["shape"]
        same = [o for o in objs if o["color"] == target["color"]]
        cot = [
            rng.choice([f"The question asks for the shape of {the}.", f"I need to find which shape {the} has."]),
            f"The image shows {_listing(same)}.",
            f"{_cap(the)} is the {full_name(target)} {position_phrase(target['position'])}, so its shape is a {answer}.",
        ]
    elif qtype == "count":
        question, answer, cot = _count_question(objs, rng)
    elif qtype == "exist":
        if rng.random() < 0.5:
            target = rng.choice(objs)
            color, shape = target["color"], target["shape"]
        else:
            present = {(o["color"], o["shape"]) for o in objs}
            color, shape = rng.choice([(c, s) for c in COLORS for s in SHAPES if (c, s) not in present])
            target = None
        a = _article(color)
        question = rng.choice([
            f"Is there {a} {color} {shape}?",
            f"Is there {a} {color} {shape} in the image?",
            f"Does the image contain {a} {color} {shape}?",
            f"Can you see {a} {color} {shape}?",
        ])  # fmt: skip
        answer = "yes" if target else "no"
        cot = [
            f"The question asks whether the image contains {a} {color} {shape}.",
            f"The image shows {_listing(objs)}.",
            f"The {full_name(target)} {position_phrase(target['position'])} is {a} {color} {shape}, so the answer is yes."
            if target
            else f"None of the shapes is {a} {color} {shape}, so the answer is no.",
        ]
    elif qtype == "position":
        target = rng.choice(objs)
        name = f"the {target['color']} {target['shape']}"
        question = rng.choice([f"Where is {name}?", f"Where is {name} located?", f"In which part of the image is {name}?"])
        answer = target["position"]
        row, col = _grid(answer)
        cot = [
            f"The question asks for the location of {name}.",
            f"{_cap(name)} lies in the {ROWS[row]} row and the {COLUMNS[col]} column of the image.",
            f"The {ROWS[row]} row and the {COLUMNS[col]} column together mean {position_phrase(answer).split(' ', 1)[1]}, "
            f"so {name} is {position_phrase(answer)}.",
        ]
    elif qtype == "background":
        bg = scene["background"]
        question = rng.choice(["What color is the background?", "What is the background color?", "Which color is the background of the image?"])
        answer = bg
        cot = [
            "The question asks for the color of the background.",
            f"The {_plural('shape', len(objs))} {'sits' if len(objs) == 1 else 'sit'} on a plain {bg} background.",
            f"The area around the shapes is {bg}, so the background is {bg}.",
        ]
    else:
        raise ValueError(f"unknown question type {qtype!r}; valid: {', '.join(QTYPES)}")
    return {"qtype": qtype, "question": question, "answer": answer, "cot": [*cot, answer]}


def _count_question(objs: list[dict], rng: random.Random) -> tuple[str, str, list[str]]:
    kind = rng.choice(["all", "shape", "color"])
    if kind == "all":
        matching = objs
        thing = "objects in the image"
        question = rng.choice(["How many objects are there?", "How many shapes are in the image?", "How many objects does the image contain?"])
    else:
        present = [o[kind] for o in objs]
        choices = list(SHAPES if kind == "shape" else COLORS)
        value = rng.choice(present) if rng.random() < 0.8 else rng.choice(choices)
        matching = [o for o in objs if o[kind] == value]
        if kind == "shape":
            thing = f"{value}s"
            question = rng.choice([f"How many {value}s are there?", f"How many {value}s are in the image?"])
        else:
            thing = f"{value} objects"
            question = rng.choice([f"How many {value} objects are there?", f"How many {value} shapes are in the image?"])
    answer = str(len(matching))
    names = [f"the {o['color']} {o['shape']}" for o in matching]
    cot = [
        f"The question asks for the number of {thing}.",
        f"The image shows {_listing(objs)}.",
        f"Counting the matching shapes gives {_join(names)}: {answer} in total." if matching else f"No shape in the image matches, so the count is {answer}.",
    ]
    return question, answer, cot


def sample_questions(scene: dict, rng: random.Random, k: int, qtypes: Sequence[str] = ()) -> list[dict]:
    """k questions of distinct types (fewer if the scene allows fewer), types drawn uniformly from the
    scene's available types, restricted to `qtypes` (empty: all)."""
    available = [t for t in available_qtypes(scene) if not qtypes or t in qtypes]
    types = rng.sample(available, min(k, len(available)))
    return [make_question(scene, rng, t) for t in types]


# ----------------------------------------------------------------------------- text-only QA
_SIDES = {"triangle": 3, "square": 4, "rectangle": 4, "pentagon": 5, "hexagon": 6, "octagon": 8}
_MIXES = [("blue", "yellow", "green"), ("red", "yellow", "orange"), ("red", "blue", "purple"), ("black", "white", "gray")]
_OPPOSITES = {"large": "small", "small": "large", "top": "bottom", "bottom": "top", "left": "right",
              "right": "left", "black": "white", "white": "black", "up": "down", "down": "up"}  # fmt: skip
TEXT_QTYPES = ("sides", "mixing", "arithmetic", "comparison", "opposite", "successor")


def text_qa(rng: random.Random) -> dict:
    """A question answerable without an image, with a short-sentence answer: {"qtype","question","answer"}."""
    qtype = rng.choice(TEXT_QTYPES)
    if qtype == "sides":
        shape = rng.choice(list(_SIDES))
        a = _article(shape)
        question = rng.choice([f"How many sides does {a} {shape} have?", f"What is the number of sides of {a} {shape}?",
                               f"Tell me how many sides {a} {shape} has."])  # fmt: skip
        answer = f"{_cap(a)} {shape} has {NUMBER_WORDS[_SIDES[shape]]} sides."
    elif qtype == "mixing":
        x, y, z = rng.choice(_MIXES)
        x, y = (x, y) if rng.random() < 0.5 else (y, x)
        question = rng.choice([f"What color do you get by mixing {x} and {y}?", f"If you mix {x} and {y}, what color do you get?",
                               f"Which color results from mixing {x} and {y}?"])  # fmt: skip
        answer = f"Mixing {x} and {y} gives {z}."
    elif qtype == "arithmetic":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        if rng.random() < 0.5:
            question = rng.choice([f"What is {a} plus {b}?", f"How much is {a} plus {b}?", f"Add {a} and {b}."])
            answer = f"{a} plus {b} equals {a + b}."
        else:
            a, b = max(a, b), min(a, b)
            question = rng.choice([f"What is {a} minus {b}?", f"How much is {a} minus {b}?", f"Subtract {b} from {a}."])
            answer = f"{a} minus {b} equals {a - b}."
    elif qtype == "comparison":
        a, b = rng.sample(range(21), 2)
        if rng.random() < 0.5:
            question = rng.choice([f"Which number is larger, {a} or {b}?", f"Which is bigger, {a} or {b}?"])
            answer = f"{max(a, b)} is larger than {min(a, b)}."
        else:
            question = rng.choice([f"Which number is smaller, {a} or {b}?", f"Which is less, {a} or {b}?"])
            answer = f"{min(a, b)} is smaller than {max(a, b)}."
    elif qtype == "opposite":
        word = rng.choice(list(_OPPOSITES))
        question = rng.choice([f"What is the opposite of {word}?", f"Name the opposite of {word}.", f"Which word means the opposite of {word}?"])
        answer = f"The opposite of {word} is {_OPPOSITES[word]}."
    else:
        n = rng.randint(0, 19)
        question = rng.choice([f"What number comes after {n}?", f"Which number follows {n}?", f"What is the next number after {n}?"])
        answer = f"{n + 1} comes after {n}."
    return {"qtype": qtype, "question": question, "answer": answer}


def coverage_texts(n: int = 300, max_objects: int = 6) -> list[str]:
    """Texts of n fixed-seed scenes and text prompts, every question type included.

    A small world may never draw some template; a tokenizer trained on the world plus these texts
    still knows every word the world's language can produce.
    """
    texts: list[str] = []
    for i in range(n):
        rng = random.Random(f"coverage:{i}")
        scene = sample_scene(rng, max_objects)
        caption = dd_caption(scene, rng)
        texts += cod_steps(scene, rng, caption)
        for qtype in available_qtypes(scene):
            q = make_question(scene, rng, qtype)
            texts += [q["question"], *q["cot"]]
        qa = text_qa(rng)
        texts += [qa["question"], qa["answer"]]
    return texts


def lexicon() -> list[str]:
    """Every content word the world's answers can use, so a tokenizer trained on the world covers them."""
    words = [*SHAPES, *COLORS, *BACKGROUNDS, *SIZES, *POSITIONS, *CORNERS, *NUMBER_WORDS, *ORDINALS, *ROWS, *COLUMNS]
    words += [*_SIDES, *(z for m in _MIXES for z in m), *_OPPOSITES, *(str(i) for i in range(21)), "yes", "no"]
    return sorted(set(words))
