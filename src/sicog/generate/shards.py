"""Sharded, resumable candidate writing: nothing lost, nothing duplicated, whatever kills a shard.

A pool is split into shards by record id: shard(id) = sha256(id) mod n, stable under re-runs and
independent of the pool's order. Inside a shard, records are sorted by id and cut into chunks of
`chunk_size` records. Each finished chunk is written whole (`sicog.store.write_text` is atomic, on
local disk and on S3) as `chunk-00000.jsonl`, then the shard's `manifest.json` is rewritten with that
chunk's sha256, row count and ids. A re-run reads the manifest, skips every listed chunk whose file
still has the recorded sha256 and ids, and samples the rest.

Why that is exact: a chunk's rows depend only on its records and their seeds (cycle seed, id, index),
never on timing, so a redone chunk asks for exactly the same candidates; rows inside a chunk are sorted
by (id, index), so a chunk file does not depend on completion order either. After a kill -9 the work
lost is the chunk in flight (the remote sampler also has up to `concurrency` requests of the next
chunk started, so the server's batch stays full across the boundary); a chunk file written just before
the manifest update is overwritten by the same content.

Layout of a shard folder (`<work>/sampling/<task>/shard-00003/`):
  chunk-00000.jsonl ...   candidate rows and failure rows (`"text": null, "error": reason`)
  manifest.json           {"plan": fingerprint, "chunks": {name: {sha256, rows, failures, ids}}, "complete"}
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator

from sicog import store
from sicog.errors import UserError
from sicog.records import jsonl_lines

MANIFEST = "manifest.json"


def shard_of(record_id: str, shards: int) -> int:
    """sha256 of the id (UTF-8), first 8 bytes, mod `shards`: the same in every process and machine."""
    digest = hashlib.sha256(str(record_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def shard_records(records: list[dict], shard: int, shards: int) -> list[dict]:
    """The records of one shard, sorted by id."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is outside 0..{shards - 1}")
    return sorted((r for r in records if shard_of(r["id"], shards) == shard), key=lambda r: r["id"])


def chunk_name(k: int) -> str:
    return f"chunk-{k:05d}.jsonl"


def shard_dir(work_uri: str, task: str, shard: int) -> str:
    """Where a shard's chunks live in the store (the layout agreed for the pipeline's work_uri)."""
    return store.join(work_uri, "sampling", task, f"shard-{shard:05d}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(shard_uri: str) -> dict | None:
    uri = store.join(shard_uri, MANIFEST)
    return json.loads(store.read_text(uri)) if store.exists(uri) else None


def _chunk_done(shard_uri: str, entry: dict | None, ids: list[str]) -> bool:
    """A listed chunk counts as done only if its ids match the plan and its file its sha256."""
    if entry is None or entry.get("ids") != ids:
        return False
    uri = store.join(shard_uri, entry["name"])
    return store.exists(uri) and _sha256(store.read_bytes(uri)) == entry["sha256"]


def run_shard(
    shard_uri: str,
    chunks: list[list[dict]],
    make_sampler: Callable[[], object],
    plan: dict,
    advance: Callable[[int], None] | None = None,
) -> dict:
    """Sample every unfinished chunk of a shard (requests per chunk) and publish it; returns counts.

    `plan` fingerprints what the chunks were planned from (task, seeds, shard split, record ids,
    sampling settings, model): chunks written under another plan are obsolete, never mixed in; they
    are deleted (with a warning) and the shard starts over. `make_sampler` is called only when there
    is work left (loading a model costs seconds).
    """
    manifest = read_manifest(shard_uri)
    if manifest is not None and manifest.get("plan") != plan:
        changed = sorted(k for k in plan.keys() | manifest.get("plan", {}).keys() if plan.get(k) != manifest.get("plan", {}).get(k))
        warnings.warn(f"{shard_uri}: sampling plan changed ({', '.join(changed)}); discarding its old chunks", stacklevel=2)
        store.delete(shard_uri)
        manifest = None
    manifest = manifest or {"plan": plan, "chunks": {}, "complete": False}
    chunk_ids = [sorted({r["id"] for r in chunk}) for chunk in chunks]
    todo = [k for k in range(len(chunks)) if not _chunk_done(shard_uri, manifest["chunks"].get(chunk_name(k)), chunk_ids[k])]
    if advance:
        advance(sum(len(chunks[k]) for k in set(range(len(chunks))) - set(todo)))
    stats = {"chunks": len(chunks), "chunks_sampled": len(todo), "output_tokens": 0, "requests_sent": 0}
    if todo:
        manifest["complete"] = False
        sampler = make_sampler()
        for j, rows in sampler.generate_chunks([chunks[k] for k in todo], advance=advance):
            k = todo[j]
            rows.sort(key=lambda r: (r["id"], r["index"]))
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
            store.write_bytes(store.join(shard_uri, chunk_name(k)), data)
            manifest["chunks"][chunk_name(k)] = {
                "name": chunk_name(k),
                "sha256": _sha256(data),
                "rows": len(rows),
                "failures": sum(r.get("error") is not None for r in rows),
                "ids": chunk_ids[k],
            }
            store.write_text(store.join(shard_uri, MANIFEST), json.dumps(manifest, indent=1))
        stats["output_tokens"] = sampler.output_tokens
        stats["requests_sent"] = getattr(sampler, "attempts", 0)
    manifest["complete"] = True
    manifest["n_chunks"] = len(chunks)
    store.write_text(store.join(shard_uri, MANIFEST), json.dumps(manifest, indent=1))
    return stats


def read_shard(shard_uri: str) -> Iterator[dict]:
    """Every row of a complete shard, chunk by chunk, each chunk verified against its sha256."""
    manifest = read_manifest(shard_uri)
    if manifest is None or not manifest.get("complete"):
        raise UserError(f"{shard_uri}: shard not finished (no complete manifest); re-run its sampling task")
    for k in range(manifest["n_chunks"]):
        entry = manifest["chunks"].get(chunk_name(k))
        if entry is None:
            raise UserError(f"{shard_uri}: {chunk_name(k)} missing from the manifest")
        data = store.read_bytes(store.join(shard_uri, entry["name"]))
        if _sha256(data) != entry["sha256"]:
            raise UserError(f"{shard_uri}: {entry['name']} does not match its manifest sha256")
        for line in jsonl_lines(data.decode("utf-8")):
            if line:
                yield json.loads(line)
