"""Training stages: assistant-only labels, the collator, skipped records, frozen parameters, loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sicog.config import StageConfig
from sicog.models import load_model
from sicog.train.data import IGNORE_INDEX, Collator, encode_record, encode_records
from sicog.train.trainer import train_stage
from tiny import colour_world, tiny_model
from tiny import record as _rec

# One thread: on tensors this tiny, syncing a second thread costs more than it saves, and a busy
# machine (a parallel test run) makes multi-threaded tiny steps 10-100x slower.


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Solid-colour images, a colour question per image, and a tiny model trained on their text."""
    root = tmp_path_factory.mktemp("data")
    records = colour_world(root, 4, text_only=True)
    return root, records, tiny_model(tmp_path_factory.mktemp("model"), records)


def test_labels_are_exactly_the_assistant_turns(world):
    root, _, model_dir = world
    _, processor = load_model(model_dir)
    tok = processor.tokenizer
    answers = ["The image is red.", "Step 1: one\n\nStep 2: two", "yes"]
    rec = {
        "id": "multi",
        "image": "img/0.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"},
            {"from": "gpt", "value": answers[0]},
            {"from": "human", "value": "And the steps?"},
            {"from": "gpt", "value": answers[1]},
            {"from": "human", "value": "Sure?"},
            {"from": "gpt", "value": answers[2]},
        ],
    }
    feature = encode_record(rec, processor, root, max_length=512)
    ids, labels = feature["input_ids"], feature["labels"]
    assert len(ids) == len(labels)
    # Contiguous runs of labelled positions, each compared with its assistant turn tokenized alone.
    runs, current = [], []
    for tid, lab in zip(ids, labels):
        if lab == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert lab == tid
            current.append(lab)
    if current:
        runs.append(current)
    expected = [tok.encode(a + "<|im_end|>", add_special_tokens=False) for a in answers]
    assert runs == expected
    # Everything else is masked: the prompt, the role headers and all 16 image tokens.
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == 16
    assert all(lab == IGNORE_INDEX for tid, lab in zip(ids, labels) if tid == image_id)
    assert sum(lab != IGNORE_INDEX for lab in labels) == sum(len(e) for e in expected)
    assert tuple(feature["pixel_values"].shape) == (3, 32, 32)


def test_text_only_record_has_no_pixels(world):
    root, records, model_dir = world
    _, processor = load_model(model_dir)
    feature = encode_record(records[-1], processor, root, max_length=512)
    assert "pixel_values" not in feature
    assert processor.tokenizer.decode([t for t in feature["labels"] if t != IGNORE_INDEX]) == "Hello there.<|im_end|>"


def _masked_text(tok, ids, labels) -> tuple[str, str]:
    """(the text of the -100 positions, the text of the labelled positions)."""
    return tok.decode([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX]), tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])


def test_system_turn_of_a_catalog_record_is_rendered_and_masked(world, tmp_path):
    """A `{"from": "system"}` turn, normalized into the record's `system` field by the catalog reader,
    reaches the chat template as a first system message, and none of its tokens carries a label."""
    from sicog.data import catalog_from_dict, read_role
    from sicog.train.data import LazyRecords

    root, _, model_dir = world
    _, processor = load_model(model_dir)
    tok = processor.tokenizer
    system = "You are a careful colour expert."
    rows = [
        {
            "id": "s1",
            "image": "img/0.png",
            "conversations": [{"from": "system", "value": system}, {"from": "human", "value": "What colour?\n<image>"}, {"from": "gpt", "value": "red"}],
        },
        {
            "id": "s2",
            "conversations": [{"from": "system", "value": system}, {"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello there."}],
        },
    ]
    (tmp_path / "sys.json").write_text(json.dumps(rows))
    records, quarantine = read_role(catalog_from_dict({"instruct": {"uri": str(tmp_path / "sys.json"), "images": str(root)}}), "instruct")
    assert quarantine == [] and [r["system"] for r in records] == [system, system]
    for rec in records:
        feature = encode_record(rec, processor, root, max_length=512)
        ids, labels = feature["input_ids"], feature["labels"]
        text = tok.decode(ids)
        assert text.startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
        masked, labelled = _masked_text(tok, ids, labels)
        assert system in masked and "system" not in labelled
        assert labelled == ("red" if "image" in rec else "Hello there.") + "<|im_end|>"
    assert "pixel_values" in encode_record(records[0], processor, root, 512)
    lazy = LazyRecords(records, processor, root, max_length=512)  # lengths count the system turn too
    assert list(lazy.lengths) == [len(encode_record(r, processor, root, 512)["input_ids"]) for r in records]
    with_system, without = (encode_record({**records[1], **extra}, processor, root, 512) for extra in ({}, {"system": None}))
    assert len(with_system["input_ids"]) > len(without["input_ids"]) and with_system["labels"][-4:] == without["labels"][-4:]


def test_llama3_template_renders_a_system_message_outside_the_loss(world):
    from sicog.models import LLAMA3_CHAT_TEMPLATE, to_messages

    _, _, model_dir = world
    _, processor = load_model(model_dir)
    messages = to_messages([{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}], has_image=True, system="Be brief.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    text = processor.apply_chat_template(messages, chat_template=LLAMA3_CHAT_TEMPLATE, tokenize=False)
    assert (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat colour?<|eot_id|>" in text
    )
    out = processor.tokenizer.apply_chat_template(
        [{**m, "content": [c for c in m["content"] if c["type"] == "text"]} for m in messages],
        chat_template=LLAMA3_CHAT_TEMPLATE,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert processor.tokenizer.decode([t for t, m in zip(ids, mask) if m]) == "red<|eot_id|>"
    assert "Be brief." in processor.tokenizer.decode([t for t, m in zip(ids, mask) if not m])


def test_collator_pads_right_and_stacks_only_present_images(world):
    root, records, model_dir = world
    model, processor = load_model(model_dir)
    features, skipped = encode_records([records[0], records[-1], records[1]], processor, root, 512)
    assert not skipped and [f["id"] for f in features] == ["r0", "t0", "r1"]
    batch = Collator(processor.tokenizer.pad_token_id)(features)
    assert batch["pixel_values"].shape[0] == 2
    short = min(range(3), key=lambda i: len(features[i]["input_ids"]))
    n = len(features[short]["input_ids"])
    assert batch["attention_mask"][short, :n].all() and not batch["attention_mask"][short, n:].any()
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_bad_records_are_skipped_and_counted(world):
    root, records, model_dir = world
    _, processor = load_model(model_dir)
    (root / "img" / "corrupt.png").write_bytes(b"not a png")
    bad = [
        _rec("missing", "img/nope.png", "Q?", "A."),
        _rec("corrupt", "img/corrupt.png", "Q?", "A."),
        _rec("escape", "../outside.png", "Q?", "A."),
        _rec("absolute", str(root / "img" / "0.png"), "Q?", "A."),
        _rec("long", None, "Q?", "word " * 400),
        {"id": "noconv", "conversations": []},
        {"id": "noanswer", "conversations": [{"from": "human", "value": "Q?"}]},
        {"id": "badturn", "conversations": [{"from": "robot", "value": "Q?"}]},
    ]
    features, skipped = encode_records(bad + records[:2], processor, root, max_length=128)
    assert [f["id"] for f in features] == ["r0", "r1"]
    assert dict(skipped) == {"bad_image": 4, "too_long": 1, "malformed": 2, "no_answer": 1}


def _params(model_dir):
    model, _ = load_model(model_dir)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_projector_stage_trains_only_the_projector(world, tmp_path):
    root, records, model_dir = world
    stage = StageConfig(learning_rate=1e-2, max_steps=3, batch_size=4, trainable="projector")
    log = train_stage(model_dir, records, root, tmp_path / "s1", stage, seed=0, name="align", threads=1)
    before, after = _params(model_dir), _params(tmp_path / "s1")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    projector = {k for k in before if "multi_modal_projector" in k}
    assert changed == projector
    assert log["trainable_params"] == sum(before[k].numel() for k in projector)


def test_all_stage_trains_language_model_and_vision(world, tmp_path):
    root, records, model_dir = world
    stage = StageConfig(learning_rate=1e-2, max_steps=3, batch_size=4, trainable="all")
    train_stage(model_dir, records, root, tmp_path / "s2", stage, seed=0, name="instruct", threads=1)
    before, after = _params(model_dir), _params(tmp_path / "s2")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.language_model.") for k in changed)
    assert any(k.startswith("model.vision_tower.") for k in changed)
    assert any("multi_modal_projector" in k for k in changed)


def test_training_lowers_loss_and_writes_log(world, tmp_path):
    root, records, model_dir = world
    bad = [_rec("missing", "img/nope.png", "Q?", "A.")]
    # Fewer records (13) than max_steps batches of 8: max_steps governs, epochs repeat.
    stage = StageConfig(learning_rate=1e-2, max_steps=20, batch_size=8, warmup_ratio=0.1)
    log = train_stage(model_dir, records + bad, root, tmp_path / "out", stage, seed=0, name="tiny", threads=1)
    assert log["steps"] == 20 and log["records"] == len(records)
    assert log["skipped"] == {"bad_image": 1}
    losses = [loss for _, loss in log["loss_history"]]
    assert len(losses) == 20 and losses[-1] < 0.6 * losses[0]
    assert log["tokens_seen"] > 0 and log["train_seconds"] > 0
    assert json.loads((tmp_path / "out" / "train_log.json").read_text()) == log
    model, processor = load_model(tmp_path / "out")  # the stage output is a loadable checkpoint
    assert type(processor).__name__ == "LlavaProcessor"


def test_batch_larger_than_data_still_runs(world, tmp_path):
    root, records, model_dir = world
    stage = StageConfig(learning_rate=1e-3, max_steps=2, batch_size=64)
    log = train_stage(model_dir, records[:2], root, tmp_path / "few", stage, seed=0, name="few", threads=1)
    assert log["steps"] == 2 and log["records"] == 2


def test_no_usable_record_is_an_error(world, tmp_path):
    root, _, model_dir = world
    with pytest.raises(ValueError, match="no trainable records"):
        train_stage(model_dir, [_rec("x", "img/nope.png", "Q?", "A.")], root, tmp_path / "none", StageConfig(max_steps=1), seed=0, name="none")


def test_same_seed_same_weights(world, tmp_path):
    root, records, model_dir = world
    stage = StageConfig(learning_rate=1e-2, max_steps=3, batch_size=4)
    for sub in ("a", "b"):
        train_stage(model_dir, records, root, tmp_path / sub, stage, seed=7, name=sub, threads=1)
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lazy_records_measure_exact_lengths_without_encoding(world):
    from sicog.train.data import LazyRecords

    root, records, model_dir = world
    _, processor = load_model(model_dir)
    bad = [_rec("missing", "img/nope.png", "Q?", "A."), _rec("long", None, "Q?", "word " * 400), {"id": "x", "conversations": []}]
    data = LazyRecords(records + bad, processor, root, max_length=128)
    assert len(data) == len(records)
    first = data[0]  # encoded on access and never kept: memory does not grow with the data
    assert first is not data[0] and first["input_ids"] == data[0]["input_ids"]
    assert dict(data.skipped) == {"bad_image": 1, "too_long": 1, "malformed": 1}
    assert list(data.lengths) == [len(encode_record(r, processor, root, 128)["input_ids"]) for r in records]


def test_grouped_sampler_is_seeded_and_groups_lengths():
    from sicog.train.trainer import GroupedSampler

    lengths = list(np.random.default_rng(0).integers(10, 500, 400))
    a = list(GroupedSampler(lengths, 8, seed=1))
    assert sorted(a) == list(range(400)) and a == list(GroupedSampler(lengths, 8, seed=1))
    s = GroupedSampler(lengths, 8, seed=1)
    s.set_epoch(1)
    assert list(s) != a
    spread = lambda order: np.mean([np.ptp([lengths[i] for i in order[k : k + 8]]) for k in range(0, 400, 8)])  # noqa: E731
    assert spread(a) < 0.2 * spread(list(np.random.default_rng(1).permutation(400)))


def test_paper_config_loads_and_keeps_global_batches_on_32_ranks():
    from pathlib import Path

    from sicog.config import load_config
    from sicog.train.batch import batch_plan

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/paper-qwen2-7b.yaml")
    t = cfg.train
    assert (t.align.learning_rate, t.align.batch_size, t.align.trainable) == (2e-4, 256, "projector")
    for stage in (t.pretrain, t.instruct, t.warmup):
        assert (stage.learning_rate, stage.batch_size, stage.trainable) == (2e-5, 128, "all")
    for stage in (t.align, t.pretrain, t.instruct, t.warmup, t.dpo):
        assert stage.max_steps == 0 and stage.epochs == 1 and stage.warmup_ratio == 0.03 and stage.weight_decay == 0
        assert stage.lr_scheduler == "cosine"
        per_device, accumulation = batch_plan(stage.batch_size, stage.per_device_batch_size, 32)
        assert per_device * accumulation * 32 == stage.batch_size
    assert (t.max_length, t.bf16, t.gradient_checkpointing, t.deepspeed) == (4096, True, True, "zero2")
    assert (t.dpo_beta, t.dpo_sft_weight) == (0.1, 1.0)


# --- what a stage reads, and the train step's own decisions -----------------------------------------


def _text(rid: str) -> dict:
    return _rec(rid, None, "Say something.", f"Something {rid}.")


def test_training_data_is_read_by_role_and_mixed_by_source_weight(tmp_path):
    from collections import Counter

    from sicog.config import validate_config
    from sicog.data.training import training_records
    from sicog.errors import UserError

    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(_text(str(i))) + "\n" for i in range(4)))
    (tmp_path / "catalog.yaml").write_text(
        "instruct:\n  - {name: a, uri: a.jsonl, weight: 2}\n  - {name: b, uri: b.jsonl, weight: 0.5, seed: 1}\nperception: {name: p, uri: a.jsonl}\n"
    )
    cfg = validate_config({"seed": 5})
    records, quarantine = training_records(cfg, "base", tmp_path, None)
    counts = Counter(r["id"] for r in records)
    assert quarantine == [] and {k: v for k, v in counts.items() if k.startswith("a/")} == {f"a/{i}": 2 for i in range(4)}
    drawn = sorted(k for k in counts if k.startswith("b/"))
    assert len(drawn) == 2 and all(counts[k] == 1 for k in drawn)  # a seeded half of b
    assert sorted(r["id"] for r in training_records(cfg, "base", tmp_path, None)[0]) == sorted(r["id"] for r in records)
    assert [r["id"] for r in training_records(cfg, "perception", tmp_path, None)[0]] == [f"p/{i}" for i in range(4)]

    curated = tmp_path / "curated"
    curated.mkdir()
    (curated / "curated.jsonl").write_text(json.dumps(_text("c0")) + "\n")
    mixed = validate_config({"seed": 5, "train": {"pretrain_mix": ["perception"]}})
    assert [r["id"] for r in training_records(mixed, "curated", tmp_path, curated)[0]] == ["c0"] + [f"p/{i}" for i in range(4)]
    with pytest.raises(UserError, match="training data 'curated' needs the curated dataset"):
        training_records(cfg, "curated", tmp_path, None)
    with pytest.raises(UserError, match="unknown training data 'everything'"):
        training_records(cfg, "everything", tmp_path, None)


def test_a_foundation_model_passes_its_base_stages_through_untrained(world, tmp_path):
    from sicog.config import validate_config
    from sicog.errors import UserError
    from sicog.steps import StepIO
    from sicog.steps.train import train
    from sicog.steps.warmup import warmup

    root, _, model_dir = world
    cfg = validate_config({"model": {"start": str(model_dir), "foundation": True}})
    for name, stage, data in (("stage1/align", "align", "align"), ("base/instruct", "instruct", "base")):
        out = tmp_path / name.replace("/", "-")
        result = train(cfg, StepIO(f"train:{name}", str(out), {"model": str(model_dir), "world": str(root)}), stage, data)
        assert result["model"] == str(out) and result["figures"] == {"stage": stage, "data": data, "steps": 0, "final_loss": None}
        assert (out / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
        assert json.loads((out / "train_log.json").read_text())["steps"] == 0 and (out / "_manifest.json").is_file()
        assert json.loads((out / "step.json").read_text())["step"] == f"train:{name}"
    with pytest.raises(UserError, match="unknown stage 'stage2'"):
        train(cfg, StepIO("train:x", str(tmp_path / "x"), {"model": str(model_dir), "world": str(root)}), "stage2", "base")
    with pytest.raises(UserError, match="unknown step-1 task 'vision': choose perception or reasoning"):
        warmup(cfg, StepIO("train:vision/warmup", str(tmp_path / "w"), {"model": str(model_dir), "world": str(root)}), "vision")


def test_training_records_are_read_when_used_in_the_order_of_the_record_lists(tmp_path):
    """At LLaVA-665k scale no rank holds a role's record list: training_records keeps positions (a
    numpy array per part) and reads a record when asked; the records and their order are those of the
    record lists it replaced (read_role, sources weighted), quarantine included."""
    import numpy as np

    from sicog.config import validate_config
    from sicog.data import read_role, run_catalog
    from sicog.data.training import TrainingRecords, training_records

    for name in ("a", "b"):
        rows = [json.dumps(_text(f"{name}{i}")) for i in range(7)] + ['{"id": "broken", ']
        (tmp_path / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "catalog.yaml").write_text(
        "instruct:\n  - {name: a, uri: a.jsonl, weight: 1.5, seed: 3}\n  - {name: b, uri: b.jsonl, weight: 0.5, seed: 1}\nperception: {name: p, uri: a.jsonl}\n"
    )
    curated = tmp_path / "cur"
    curated.mkdir()
    (curated / "curated.jsonl").write_text(json.dumps(_text("c0")) + "\n\n" + json.dumps(_text("c1")) + "\n")
    cfg = validate_config({"seed": 5, "train": {"pretrain_mix": ["perception"]}})

    def reference(role: str) -> tuple[list[dict], list[dict]]:  # the record lists of before, sources weighted
        records, bad = read_role(run_catalog(tmp_path), role)
        out = []
        for k, source in enumerate(run_catalog(tmp_path).sources(role)):
            mine = [r for r in records if r["meta"]["source"] == source.name]
            whole, share = int(source.weight), source.weight - int(source.weight)
            out += mine * whole
            if share and mine:
                rng = np.random.default_rng([cfg.seed, source.seed, k])
                out += [mine[i] for i in np.sort(rng.choice(len(mine), round(share * len(mine)), replace=False))]
        return out, bad

    records, quarantine = training_records(cfg, "base", tmp_path, None)
    expected, bad = reference("instruct")
    assert isinstance(records, TrainingRecords) and not any(isinstance(v, list) and v and isinstance(v[0], dict) for v in vars(records).values())
    assert all(isinstance(positions, np.ndarray) for _, positions in records._parts)
    assert list(records) == expected and len(records) == 7 + 4 + 4 and quarantine == bad and len(bad) == 2
    assert records[0] is not records[0] and records[-1] == expected[-1] and records[1:3] == expected[1:3]
    records, quarantine = training_records(cfg, "curated", tmp_path, curated)
    assert [r["id"] for r in records] == ["c0", "c1"] + [r["id"] for r in reference("perception")[0]] and len(quarantine) == 1


def test_lazy_records_keep_positions_and_lengths_not_records(world):
    """LazyRecords reads each record once to measure it and then only the one the Trainer asks for."""
    from sicog.train.data import LazyRecords

    root, records, model_dir = world
    _, processor = load_model(model_dir)

    class Counting:
        def __init__(self, items):
            self.items, self.reads = items, []

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            self.reads.append(i)
            return json.loads(json.dumps(self.items[i]))

    source = Counting(records + [_rec("long", None, "Q?", "word " * 400)] + records[:2])
    LazyRecords.TOKENIZE_CHUNK, chunk = 3, LazyRecords.TOKENIZE_CHUNK  # several chunks and a partial last one
    try:
        data = LazyRecords(source, processor, root, max_length=128)
    finally:
        LazyRecords.TOKENIZE_CHUNK = chunk
    n = len(records)
    assert source.reads == list(range(n + 3)) and dict(data.skipped) == {"too_long": 1}
    assert data.positions.dtype == np.int64 and data.lengths.dtype == np.int32 and list(data.positions) == [*range(n), n + 1, n + 2]
    assert list(data.lengths) == [len(encode_record(r, processor, root, 128)["input_ids"]) for r in records + records[:2]]
    source.reads.clear()
    assert data[n]["id"] == records[0]["id"] and source.reads == [n + 1]


def test_data_loader_workers_train_the_same_weights_and_count_late_skips(world, tmp_path):
    """Records encoded in data-loader worker processes give the weights the training process gives,
    and a record that fails only when encoded (its image inside a dataset that is not there) is counted
    once, in the training process, though a worker met it, every epoch."""
    from sicog.config import TrainConfig

    root, records, model_dir = world
    late = _rec("late", "hf-row:/no/such/dataset#0", "Q?", "A.")  # not checked up front: fails in __getitem__
    stage = StageConfig(learning_rate=1e-2, max_steps=6, batch_size=4)  # 14 records, 24 draws: every epoch meets it
    logs, weights = {}, {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        train = TrainConfig(dataloader_workers=workers)
        logs[workers] = train_stage(model_dir, records + [late], root, out, stage, train, seed=3, name=f"w{workers}", threads=1)
        weights[workers] = _params(out)
    assert logs[0]["skipped"] == logs[2]["skipped"] == {"bad_image": 1}
    assert logs[0]["records"] == logs[2]["records"] == len(records) + 1  # measured up front; the skip is late
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
