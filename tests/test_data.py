"""sicog.data on real-shaped inputs built here: a LLaVA-558k-style JSON array, a LLaVA-665k-style JSONL,
Hugging Face datasets (save_to_disk and parquet, images inside), LLaVA-CoT, images in S3 (moto);
the `sicog data check` command; the demo world's own catalog."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from sicog import store
from sicog.cli import app
from sicog.config import WorldConfig
from sicog.data import Quarantined, catalog_from_dict, check_catalog, content_id, load_catalog, open_role
from sicog.errors import UserError
from sicog.records import IMAGE_TOKEN

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def _image_bytes(ext: str, size=(24, 16), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=FORMATS[ext])
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _caption(question: str, answer: str, **extra) -> dict:
    return {**extra, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


@pytest.fixture
def llava558k(tmp_path) -> Path:
    """A JSON array: nested image folders, JPEG/PNG/WebP, `<image>` at the end, no ids, and bad rows."""
    root = tmp_path / "558k"
    good = []
    for i, ext in enumerate(["jpg", "png", "webp", "jpg", "png", "webp"]):
        rel = f"images/{i % 2:05d}/sub{i}/img{i}.{ext}"
        _write(root / rel, _image_bytes(ext, size=(20 + i, 10 + i)))
        good.append(_caption(f"Render a caption.\n{IMAGE_TOKEN}", f"a red box number {i}", image=rel))
    _write(root / "images/corrupt.png", b"\x89PNG\r\n\x1a\nnot really a png")
    bomb = io.BytesIO()
    Image.new("L", (5000, 4000)).save(bomb, format="PNG")  # 20 Mpx > records.MAX_IMAGE_PIXELS, a few KB on disk
    _write(root / "images/bomb.png", bomb.getvalue())
    _write(tmp_path / "outside.png", _image_bytes("png"))
    bad = [
        _caption(f"{IMAGE_TOKEN}\nDescribe.", "x", image="images/missing.jpg"),
        _caption(f"{IMAGE_TOKEN}\nDescribe.", "x", image="images/corrupt.png"),
        _caption(f"{IMAGE_TOKEN}\nDescribe.", "x", image="images/bomb.png"),
        _caption(f"{IMAGE_TOKEN}\nDescribe.", "x", image="../outside.png"),
        _caption(f"{IMAGE_TOKEN}\nDescribe.", "   ", image=good[0]["image"]),  # empty answer
        "not an object",
    ]
    _write(root / "blip_558k.json", json.dumps(good + bad, indent=1))
    return root / "blip_558k.json"


@pytest.fixture
def llava665k(tmp_path) -> Path:
    """JSONL: system turns, text-only rows, a malformed line, a row repeated exactly (id and content) inside the file."""
    root = tmp_path / "665k"
    _write(root / "coco/a.jpg", _image_bytes("jpg"))
    rows = [
        {
            "id": "1",
            "image": "coco/a.jpg",
            "conversations": [
                {"from": "system", "value": "You are helpful."},
                {"from": "human", "value": f"What colour?\n{IMAGE_TOKEN}"},
                {"from": "gpt", "value": "Red."},
                {"from": "human", "value": "Sure?"},
                {"from": "gpt", "value": "Yes."},
            ],
        },
        _caption("Name a prime.", "Seven.", id="2"),
        _caption("Name a colour.", "Blue.", id="3"),
        _caption("Name a prime.", "Seven.", id="2"),
        _caption(f"{IMAGE_TOKEN}\nWhat is shown?", "Nothing.", id="4"),  # a marker but no image
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, '{"id": "broken", "conversations": [')
    _write(root / "mix665k.jsonl", "\n".join(lines) + "\n\n")
    return root / "mix665k.jsonl"


def _catalog(tmp_path, data: dict) -> Path:
    return _write(tmp_path / "catalog.yaml", yaml.safe_dump(data))


# --- catalog --------------------------------------------------------------------------------------


def test_catalog_resolves_relative_paths_and_rejects_unknown_keys(tmp_path, llava558k):
    path = _catalog(tmp_path, {"align": {"uri": "558k/blip_558k.json", "images": "558k"}})
    catalog = load_catalog(path)
    (source,) = catalog.sources("align")
    assert source.uri == str(llava558k) and source.images == str(llava558k.parent) and source.name == "blip_558k"
    assert catalog.roles() == ["align"]
    with pytest.raises(UserError, match=r"align\.0\.imgs: unknown key \(valid: uri, name, images, format, limit, seed, weight, prefix_ids\)"):
        catalog_from_dict({"align": [{"uri": "a.json", "imgs": "x"}]})
    with pytest.raises(UserError, match=r"aling: unknown key \(valid: align, instruct, perception, reasoning, pool_images"):
        catalog_from_dict({"aling": [{"uri": "a.json"}]})
    with pytest.raises(UserError, match="two sources are named 'a'"):
        catalog_from_dict({"instruct": [{"uri": "x/a.jsonl"}, {"uri": "y/a.jsonl"}]})
    with pytest.raises(UserError, match="no such file"):
        load_catalog(tmp_path / "nope.yaml")


def test_catalog_from_s3(bucket):
    store.write_text(f"s3://{bucket}/cat/catalog.yaml", "instruct:\n  - uri: data/x.jsonl\n    images: img\n")
    (source,) = load_catalog(f"s3://{bucket}/cat/catalog.yaml").sources("instruct")
    assert source.uri == f"s3://{bucket}/cat/data/x.jsonl" and source.images == f"s3://{bucket}/cat/img"


# --- LLaVA JSON array and JSONL -------------------------------------------------------------------


def _reasons(rows: list[dict]) -> dict:
    out: dict = {}
    for row in rows:
        out[row["reason"]] = out.get(row["reason"], 0) + 1
    return out


def _all(data, **kw):
    records, images, quarantined = [], [], []
    for batch in data.batches(4, **kw):
        records += batch.records
        images += batch.images
        quarantined += batch.quarantined
    return records, images, quarantined


def test_llava_json_array(llava558k):
    data = open_role(catalog_from_dict({"align": {"uri": str(llava558k), "images": str(llava558k.parent)}}), "align")
    assert len(data) == 12
    records, images, quarantined = _all(data)
    assert len(records) == 6 and {im.format for im in images} == {"JPEG", "PNG", "WEBP"}
    assert [im.size for im in images] == [(20 + i, 10 + i) for i in range(6)]
    assert all(r["conversations"][0]["value"] == f"{IMAGE_TOKEN}\nRender a caption." for r in records)
    raw = json.loads(llava558k.read_text())[0]
    assert records[0]["id"] == f"blip_558k/{content_id(raw)}" and records[0]["meta"]["id_from_content"]
    assert content_id(raw).startswith("sha256-") and content_id({**raw, "id": 5}) == content_id(raw)  # stable, id ignored
    assert len({r["id"] for r in records}) == 6
    assert _reasons(quarantined) == {
        "image not found": 1,
        "corrupt image": 1,
        "image over the pixel limit": 1,
        "image path escapes the data root": 1,
        "no answer": 1,
        "not a JSON object": 1,
    }


def test_truncated_json_array_keeps_complete_records(tmp_path):
    text = json.dumps([_caption("Q1", "A1", id="a"), _caption("Q2", "A2", id="b")])
    path = _write(tmp_path / "cut.json", text[: text.index('"b"') + 10])
    records, _, quarantined = _all(open_role(catalog_from_dict({"instruct": {"uri": str(path)}}), "instruct"))
    assert [r["id"] for r in records] == ["cut/a"] and _reasons(quarantined) == {"malformed JSON": 1}
    _write(tmp_path / "obj.json", '{"id": 1}')
    with pytest.raises(UserError, match="not a JSON array"):
        len(open_role(catalog_from_dict({"instruct": {"uri": str(tmp_path / "obj.json"), "format": "json"}}), "instruct"))


def test_llava_jsonl_system_text_only_and_namespaced_duplicates(tmp_path, llava665k):
    other = _write(tmp_path / "other/more.jsonl", json.dumps(_caption("Name a prime.", "Two.", id="2")) + "\n")
    catalog = catalog_from_dict({"instruct": [{"name": "llava665k", "uri": str(llava665k)}, {"uri": str(other)}]})
    data = open_role(catalog, "instruct")
    assert len(data) == 7
    records, images, quarantined = _all(data)
    assert [r["id"] for r in records] == ["llava665k/1", "llava665k/2", "llava665k/3", "more/2"]
    first = records[0]
    assert first["system"] == "You are helpful." and [t["from"] for t in first["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert first["conversations"][0]["value"] == f"{IMAGE_TOKEN}\nWhat colour?" and IMAGE_TOKEN not in first["conversations"][2]["value"]
    assert images[0].format == "JPEG" and images[1:] == [None, None, None]
    assert records[3]["meta"] == {"source": "more", "source_id": "2", "row": 0}
    assert _reasons(quarantined) == {"malformed JSON": 1, "duplicate id": 1, "image marker without an image": 1}
    dup = next(q for q in quarantined if q["reason"] == "duplicate id")
    assert dup["row"] == 4 and dup["source"] == "llava665k" and dup["id"] == "llava665k/2"
    assert {q["reason"]: q["id"] for q in quarantined} == {
        "malformed JSON": None,
        "duplicate id": "llava665k/2",
        "image marker without an image": "llava665k/4",
    }
    with pytest.raises(Quarantined, match="malformed JSON"):
        data[2]


def _repeated_ids(root: Path) -> list[dict]:
    """LLaVA-665k's habit: ids reused by rows of other content, image and text-only, and exact repeats."""
    for name in ("x", "y"):
        _write(root / f"coco/{name}.jpg", _image_bytes("jpg"))
    return [
        _caption(f"{IMAGE_TOKEN}\nWhat is it?", "A box.", id="a", image="coco/x.jpg"),  # 0 keeps "a"
        _caption("Name a prime.", "Seven.", id="t"),  # 1 keeps "t"
        _caption(f"{IMAGE_TOKEN}\nWhat colour?", "Red.", id="a", image="coco/y.jpg"),  # 2 other content: a~<hex>
        _caption("Name a prime.", "Seven.", id="t"),  # 3 exact repeat of 1: duplicate
        _caption("Name a colour.", "Blue.", id="t"),  # 4 other content: t~<hex>
        _caption(f"{IMAGE_TOKEN}\nWhat colour?", "Red.", id="a", image="coco/y.jpg"),  # 5 exact repeat of 2: duplicate
        _caption("Name a colour.", "Blue.", id="t"),  # 6 exact repeat of 4: duplicate
        _caption("Unique.", "Yes.", id="u"),  # 7
        _caption("Name a prime.", "Seven."),  # 8, 9: no id, twice: one content id, a duplicate
        _caption("Name a prime.", "Seven."),
    ]


def test_repeated_ids_with_other_content_are_kept_under_stable_ids(tmp_path):
    rows = _repeated_ids(tmp_path)
    array = _write(tmp_path / "mix.json", json.dumps(rows, indent=1))
    lines = _write(tmp_path / "jsonl/mix.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    hexes = {i: content_id(rows[i]).removeprefix("sha256-") for i in (2, 4)}
    expected = ["mix/a", "mix/t", f"mix/a~{hexes[2]}", f"mix/t~{hexes[4]}", "mix/u", f"mix/{content_id(rows[8])}"]

    def read(source: dict):
        return _all(open_role(catalog_from_dict({"instruct": {"images": str(tmp_path), **source}}), "instruct"))

    records, images, quarantined = read({"uri": str(array)})
    assert [r["id"] for r in records] == expected and len(set(expected)) == len(expected)
    assert [r["meta"]["row"] for r in records] == [0, 1, 2, 4, 7, 8] and records[2]["meta"]["source_id"] == f"a~{hexes[2]}"
    assert [im is not None for im in images] == [True, False, True, False, False, False]
    assert records[2]["conversations"][0]["value"] == f"{IMAGE_TOKEN}\nWhat colour?"
    assert [(q["row"], q["reason"], q["id"]) for q in quarantined] == [
        (3, "duplicate id", "mix/t"),
        (5, "duplicate id", f"mix/a~{hexes[2]}"),
        (6, "duplicate id", f"mix/t~{hexes[4]}"),
        (9, "duplicate id", f"mix/{content_id(rows[8])}"),
    ]
    # Stable across runs and readers: the same ids again, and from the same rows as JSONL.
    assert [r["id"] for r in read({"uri": str(array)})[0]] == expected
    assert [r["id"] for r in read({"uri": str(lines), "name": "mix"})[0]] == expected
    # ... and across subsets: a row's id does not depend on which rows a `limit` draws.
    for seed in range(4):
        subset, _, dups = read({"uri": str(array), "limit": 6, "seed": seed})
        assert {r["meta"]["row"]: r["id"] for r in subset}.items() <= dict(zip([0, 1, 2, 4, 7, 8], expected)).items() | {
            (5, f"mix/a~{hexes[2]}"), (3, "mix/t"), (6, f"mix/t~{hexes[4]}"), (9, f"mix/{content_id(rows[8])}")}  # fmt: skip
        assert len({r["id"] for r in subset}) == len(subset) and all(q["reason"] == "duplicate id" for q in dups)
    # prefix_ids: false keeps the source's ids (and the quarantine rows say the same ids)
    records, _, quarantined = read({"uri": str(array), "prefix_ids": False})
    assert [r["id"] for r in records] == [e.removeprefix("mix/") for e in expected] and quarantined[0]["id"] == "t"


def test_quarantine_rows_carry_the_namespaced_id(tmp_path, llava558k):
    from sicog.data import read_role

    rows = [_caption("Q?", "A.", id="ok"), _caption("Q?", "  ", id="noanswer"), _caption(f"{IMAGE_TOKEN}\nQ?", "A.", id="gone", image="nope.png")]
    path = _write(tmp_path / "src.json", json.dumps(rows))
    catalog = catalog_from_dict({"instruct": {"uri": str(path), "name": "s"}, "align": {"uri": str(llava558k)}})
    _, _, quarantined = _all(open_role(catalog, "instruct"))  # the batched pass (training, `data check`)
    assert {q["reason"]: q["id"] for q in quarantined} == {"no answer": "s/noanswer", "image not found": "s/gone"}
    records, quarantine = read_role(catalog, "instruct")  # what the steps read (sampling, training records)
    assert [r["id"] for r in records] == ["s/ok", "s/gone"] and [(q["reason"], q["id"]) for q in quarantine] == [("no answer", "s/noanswer")]
    raw = json.loads(llava558k.read_text())
    _, _, bad = _all(open_role(catalog, "align"))
    ids = {q["reason"]: q["id"] for q in bad}
    assert ids["no answer"] == f"blip_558k/{content_id(raw[10])}" and ids["corrupt image"] == f"blip_558k/{content_id(raw[7])}"
    assert ids["not a JSON object"] is None


def test_json_array_index_hands_its_pages_back_and_reads_rows_without_the_map(tmp_path):
    """The scan of a LLaVA JSON array releases the pages it passed (so a 1 GB file does not add 1 GB to
    a rank's peak RSS) and closes its map; rows are positioned reads of the file afterwards."""
    from sicog.data.formats import JsonArrayRows

    rows = [_caption(f"Question {i}?", "An answer. " * (i % 7 + 1), id=str(i)) for i in range(400)]
    path = _write(tmp_path / "big.json", json.dumps(rows, indent=1))
    released = []

    class Recording(JsonArrayRows):
        RELEASE_BYTES = 4096

        def _release(self, mm, upto):
            released.append(upto)
            super()._release(mm, upto)

    reader = Recording(path)
    assert list(reader.index()) == rows and reader._map is None
    assert len(released) >= path.stat().st_size // 4096 - 2 and released == sorted(released)
    assert [reader.row(i) for i in (0, 399, 123)] == [rows[0], rows[399], rows[123]]
    partial = Recording(path)
    next(iter(partial.index()))  # an abandoned scan closes its map too (when the generator is collected)
    assert partial.row(0) == rows[0]


def test_reading_records_loads_no_image(llava558k, monkeypatch):
    opened = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or original(*a, **k))
    data = open_role(catalog_from_dict({"align": {"uri": str(llava558k)}}), "align")
    records = [data[i] for i in range(6)]
    assert opened == [] and all("image" in r for r in records)
    data.load_images(records[:2])
    assert len(opened) == 2
    same = data.load_images([records[2], records[2]])
    assert len(opened) == 3 and same[0] is same[1]  # records sharing an image share one fetch and decode


def test_limit_seed_subset_and_weighted_mixing(tmp_path):
    rows = "".join(json.dumps(_caption(f"Q{i}", f"A{i}", id=i)) + "\n" for i in range(100))
    a, b = _write(tmp_path / "a.jsonl", rows), _write(tmp_path / "b.jsonl", rows)
    catalog = catalog_from_dict({"instruct": [{"uri": str(a), "limit": 10, "seed": 3}, {"uri": str(b), "weight": 0.5, "seed": 1}]})
    data = open_role(catalog, "instruct")
    ids = [data[i]["id"] for i in range(10)]
    assert ids == [open_role(catalog, "instruct")[i]["id"] for i in range(10)]  # deterministic
    assert ids == sorted(ids, key=lambda s: int(s.split("/")[1])) and len(set(ids)) == 10  # file order
    assert len(data) == 110
    order = data.order(seed=7)
    assert len(order) == 10 + 50 and list(order) == list(data.order(seed=7)) and list(order) != list(data.order(seed=8))
    assert sum(i < 10 for i in order) == 10 and len(set(order.tolist())) == 60
    twice = open_role(catalog_from_dict({"instruct": {"uri": str(a), "weight": 2}}), "instruct")
    assert sorted(twice.order(0).tolist()) == sorted(list(range(100)) * 2)


# --- Hugging Face datasets and LLaVA-CoT ----------------------------------------------------------


def _hf_columns(n: int) -> dict:
    return {"id": [f"r{i}" for i in range(n)],
            "image": [{"bytes": _image_bytes(["png", "jpg", "webp"][i % 3]), "path": None} for i in range(n)],
            "conversations": [[{"from": "human", "value": f"Describe it. {IMAGE_TOKEN}"}, {"from": "gpt", "value": f"box {i}"}]
                              for i in range(n)]}  # fmt: skip


def test_hf_save_to_disk_and_parquet(tmp_path):
    import datasets

    columns = _hf_columns(5)
    columns["image"][4] = {"bytes": b"garbage", "path": None}
    ds = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    pq = tmp_path / "pq"
    pq.mkdir()
    plain = datasets.Dataset.from_dict(_hf_columns(4))  # image as a plain {bytes, path} struct
    plain.select(range(2)).to_parquet(str(pq / "part-0.parquet"))
    plain.select(range(2, 4)).to_parquet(str(pq / "part-1.parquet"))
    catalog = catalog_from_dict({"pool_images": [{"name": "saved", "uri": str(tmp_path / "saved")}, {"name": "pq", "uri": str(pq)}]})
    records, images, quarantined = _all(open_role(catalog, "pool_images"))
    assert [r["id"] for r in records] == [f"saved/r{i}" for i in range(4)] + [f"pq/r{i}" for i in range(4)]
    assert [im.format for im in images] == ["PNG", "JPEG", "WEBP", "PNG"] * 2
    assert records[0]["conversations"][0]["value"] == f"{IMAGE_TOKEN}\nDescribe it." and records[0]["meta"]["embedded_image"]
    assert _reasons(quarantined) == {"corrupt image": 1} and quarantined[0]["id"] == "saved/r4"
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd/dataset_dict.json").write_text("{}")
    with pytest.raises(UserError, match="DatasetDict"):
        len(open_role(catalog_from_dict({"pool_images": {"uri": str(tmp_path / "dd"), "format": "hf"}}), "pool_images"))


def test_llava_cot_converted_on_read(tmp_path):
    tagged = "<SUMMARY>Count.</SUMMARY><CAPTION>Two boxes.</CAPTION><REASONING>One and one.</REASONING><CONCLUSION>2</CONCLUSION>"
    rows = [_caption("How many? Answer the question using a single word or phrase.", tagged, id="q1"), _caption("How many?", "<SUMMARY>x</SUMMARY>", id="q2")]
    path = _write(tmp_path / "cot.json", json.dumps(rows))
    data = open_role(catalog_from_dict({"reasoning": {"uri": str(path), "format": "llava-cot"}}), "reasoning")
    assert len(data) == 4
    records, _, quarantined = _all(data)
    da, cot = records
    assert (da["id"], cot["id"]) == ("cot/q1-da", "cot/q1-cot") and da["conversations"][1]["value"] == "2"
    assert cot["conversations"][1]["value"].startswith("Step 1: ") and cot["meta"]["format"] == "cot"
    assert cot["conversations"][0]["value"].endswith("Answer the question step-by-step.")
    assert len(quarantined) == 2 and all("CAPTION" in q["reason"] for q in quarantined)


# --- S3 -------------------------------------------------------------------------------------------


def test_images_and_records_in_s3(bucket, llava665k, monkeypatch):
    for i, ext in enumerate(["jpg", "png", "webp"]):
        store.write_bytes(f"s3://{bucket}/img/d{i}/x{i}.{ext}", _image_bytes(ext))
    rows = [_caption(f"Q {IMAGE_TOKEN}", f"A{i}", id=i, image=f"d{i}/x{i}.{['jpg', 'png', 'webp'][i]}") for i in range(3)]
    rows.append(_caption("Q", "A", id=9, image="../escape.png"))
    store.write_text(f"s3://{bucket}/ann/data.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    catalog = catalog_from_dict({"instruct": {"uri": f"s3://{bucket}/ann/data.jsonl", "images": f"s3://{bucket}/img"}})
    data = open_role(catalog, "instruct")
    fetched = []
    original = store.read_bytes
    monkeypatch.setattr(store, "read_bytes", lambda uri: fetched.append(uri) or original(uri))
    assert data[1]["image"] == "d1/x1.png" and fetched == []
    records, images, quarantined = _all(data)
    assert [im.format for im in images] == ["JPEG", "PNG", "WEBP"] and sorted(fetched) == sorted(f"s3://{bucket}/img/{r['image']}" for r in records)
    assert _reasons(quarantined) == {"image path escapes the data root": 1}


# --- sicog data check -----------------------------------------------------------------------------


def test_cli_data_check(tmp_path, llava558k, llava665k):
    path = _catalog(tmp_path, {"align": {"uri": "558k/blip_558k.json"}, "instruct": {"name": "llava665k", "uri": "665k/mix665k.jsonl"}})
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    align, instruct = report["roles"]["align"]["blip_558k"], report["roles"]["instruct"]["llava665k"]
    assert (align["rows"], align["records"], align["images"], align["quarantined"]) == (12, 6, 6, 6)
    assert align["image_formats"] == {"JPEG": 2, "PNG": 2, "WEBP": 2} and align["width"] == [20, 25] and align["height"] == [10, 15]
    assert (instruct["records"], instruct["images"], instruct["text_only"], instruct["system"]) == (3, 1, 2, 1)
    assert instruct["quarantine_reasons"] == {"malformed JSON": 1, "duplicate id": 1, "image marker without an image": 1}
    assert report["totals"] == {"records": 9, "quarantined": 9}
    table = runner.invoke(app, ["data", "check", str(path), "--role", "instruct"])
    assert table.exit_code == 0 and "llava665k" in table.output and "duplicate id: 1" in table.output and "blip_558k" not in table.output
    for bad in ({"align": {"uri": "558k/blip_558k.json", "wieght": 2}}, {"align": {"uri": "nope.jsonl"}}, {}):
        result = runner.invoke(app, ["data", "check", str(_catalog(tmp_path, bad))])
        assert result.exit_code == 2 and result.output.count("\n") <= 3 and "error:" in result.output, result.output
    assert "unknown key (valid: uri, name" in runner.invoke(app, ["data", "check", str(_catalog(tmp_path, {"align": {"uri": "x", "wieght": 2}}))]).output


# --- the demo world -------------------------------------------------------------------------------


def test_world_catalog(tmp_path):
    from sicog.world import FILES, build_world, world_catalog

    world = tmp_path / "w"
    manifest = build_world(world, WorldConfig(n_base=6, n_annotated=3, n_pool_images=3, n_pool_vqa=3, n_pool_text=2, n_heldout=2))
    catalog = world_catalog(world)
    assert {n: hashlib.sha256((world / n).read_bytes()).hexdigest() for n in FILES} == manifest["sha256"]  # world unchanged
    assert catalog.roles() == ["align", "instruct", "perception", "reasoning", "pool_images", "pool_vqa", "pool_text", "truth", "heldout"]
    assert load_catalog(world / "catalog.yaml") == catalog
    report = check_catalog(catalog)
    counts = {role: sources["world"]["records"] for role, sources in report["roles"].items()}
    assert counts == {"align": 6, "instruct": 6 * 4 + 6 // 4, "perception": 6, "reasoning": 6, "pool_images": 3, "pool_vqa": 3,
                      "pool_text": 2, "truth": 8, "heldout": 6}  # fmt: skip
    assert report["totals"]["quarantined"] == 0
    formats = {r["meta"]["format"] for r in _all(open_role(catalog, "perception"))[0]}
    assert formats == {"dd", "cod"}
    pool_ids = {r["id"] for role in ("pool_images", "pool_vqa", "pool_text") for r in _all(open_role(catalog, role), images=False)[0]}
    assert {r["id"] for r in _all(open_role(catalog, "truth"), images=False)[0]} == pool_ids
