"""The data catalog: which of the user's datasets feeds which SICOG role.

A catalog is a YAML (or JSON) mapping from role to one source or a list of sources:

```yaml
align:                                   # stage 1: image-caption pairs
  - name: llava558k
    uri: blip_laion_cc_sbu_558k.json     # relative to this file's folder
    images: images/558k                  # image root (local path, file://, s3://)
instruct:                                # stage 2: instructions, mixed by weight
  - {name: llava665k, uri: s3://bucket/llava_v1_5_mix665k.jsonl, images: s3://bucket/images}
  - {name: cot, uri: llava-cot.jsonl, format: llava-cot, limit: 20000, seed: 1, weight: 0.5}
pool_images: {uri: pool/, format: hf}    # a save_to_disk or parquet folder, images inside
```

Roles (`ROLES`): align, instruct, perception (DD + CoD captions), reasoning (DA + CoT answers),
pool_images / pool_vqa / pool_text (unlabeled step-2 inputs), truth (ground truth of pool ids, for
curation figures) and heldout (evaluation). Unknown roles and keys are rejected with the valid ones
named, so a typo never silently drops a dataset.

A source's `name` namespaces its ids (`<name>/<id>`): the same id in two sources of one role stays
two records. Sources of different roles that share a name share the namespace on purpose: a truth
source named like the pool source it labels yields ids that join with the pool's.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sicog import store
from sicog.errors import UserError

ROLES = ("align", "instruct", "perception", "reasoning", "pool_images", "pool_vqa", "pool_text", "truth", "heldout")
FORMATS = ("auto", "json", "jsonl", "hf", "llava-cot")
FORMAT_HELP = (
    "auto: by the uri (.jsonl -> jsonl; .json -> json if it holds an array, else jsonl; a folder, .parquet or .arrow -> hf). "
    "json: a LLaVA JSON array. jsonl: one LLaVA record per line. hf: a Hugging Face `datasets` folder (save_to_disk) or "
    "parquet/arrow files, images inside (Image feature or {bytes, path}) or as paths under `images`. "
    "llava-cot: LLaVA-CoT tagged records (JSON array or JSONL), each read as a DA and a CoT record."
)


class Source(BaseModel):
    """One dataset file or folder feeding a role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(description="The records: a local path (relative to the catalog's folder), file:// or s3:// URI.")
    name: str = Field("", description="Namespace of this source's ids (`<name>/<id>`); default: the uri's file or folder name without extension.")
    images: str = Field("", description="Root that image paths in the records are relative to; default: the records file's folder.")
    format: Literal["auto", "json", "jsonl", "hf", "llava-cot"] = Field("auto", description=FORMAT_HELP)
    limit: int | None = Field(None, ge=1, description="Read a deterministic subset of this many rows (chosen with `seed`, kept in file order).")
    seed: int = Field(0, description="Seed of the `limit` subset and of this source's share when `weight` is fractional.")
    weight: float = Field(1.0, ge=0, description="Times each record is drawn per mixed epoch: 2 repeats the source, 0.5 draws a seeded half.")
    prefix_ids: bool = Field(
        True,
        description="Prefix ids with the source name (`<name>/<id>`) so equal ids of two sources stay two "
        "records; false keeps ids as they are (they must then be unique across the catalog's sources).",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise ValueError("name must be letters, digits, '_', '.' or '-' (it prefixes record ids)")
        return value

    @model_validator(mode="after")
    def _default_name(self) -> "Source":
        if not self.name:
            stem = PurePosixPath(urlparse(self.uri).path.rstrip("/")).name.split(".")[0]
            object.__setattr__(self, "name", re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "source")
        return self


class Catalog(BaseModel):
    """Sources per SICOG role; every role may be empty, a role may hold several sources."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    align: list[Source] = Field([], description="Stage 1: image-caption pairs (e.g. LLaVA-558k).")
    instruct: list[Source] = Field([], description="Stage 2: visual instructions, text-only rows allowed (e.g. LLaVA-665k, LLaVA-NeXT-779k).")
    perception: list[Source] = Field([], description="Step-1 warm-up of the perception model: DD + CoD captions.")
    reasoning: list[Source] = Field([], description="Step-1 warm-up of the reasoning model: DA + CoT answers.")
    pool_images: list[Source] = Field([], description="Step 2: unlabeled images to caption ({id, image} or a human turn only).")
    pool_vqa: list[Source] = Field([], description="Step 2: unlabeled image-question pairs (a human turn only).")
    pool_text: list[Source] = Field([], description="Step 2: text-only prompts (a human turn only).")
    truth: list[Source] = Field([], description="Optional ground truth of pool ids (any fields), for curation figures.")
    heldout: list[Source] = Field([], description="Optional held-out evaluation rows (any fields, optional image).")

    @field_validator(*ROLES, mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value  # a role may name one source without a list

    @model_validator(mode="after")
    def _unique_names(self) -> "Catalog":
        for role in ROLES:
            names = [s.name for s in getattr(self, role)]
            for name in names:
                if names.count(name) > 1:
                    raise ValueError(f"{role}: two sources are named {name!r}; give each a distinct `name` (it namespaces ids)")
        return self

    def sources(self, role: str) -> list[Source]:
        if role not in ROLES:
            raise UserError(f"catalog: unknown role {role!r} (valid: {', '.join(ROLES)})")
        return list(getattr(self, role))

    def roles(self) -> list[str]:
        """The roles that have at least one source, in ROLES order."""
        return [r for r in ROLES if getattr(self, r)]


def _error(err: ValidationError, where: str) -> UserError:
    """One line naming the key and, for an unknown key, the valid ones."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "catalog"
    if first["type"] == "extra_forbidden":
        valid = ROLES if len(loc) == 1 else tuple(Source.model_fields)
        return UserError(f"catalog error in {where}: {key}: unknown key (valid: {', '.join(valid)})")
    return UserError(f"catalog error in {where}: {key}: {first['msg']}")


def _resolve(uri: str, base: str) -> str:
    """A relative local path against the catalog's folder (local or s3://); URIs and absolute paths as they are."""
    if not uri or urlparse(uri).scheme or uri.startswith("/"):
        return uri
    if store.is_remote(base):
        return store.join(base, posixpath.normpath(uri))
    return str((store.local_path(base) / uri).resolve()) if base else str(Path(uri).resolve())


def catalog_from_dict(data: Any, base: str = "", where: str = "catalog") -> Catalog:
    """Validate a catalog mapping; relative paths resolve against `base` (the catalog file's folder)."""
    if not isinstance(data, dict):
        raise UserError(f"catalog error in {where}: must be a mapping of role -> source(s)")
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as err:
        raise _error(err, where) from None
    resolved = {}
    for role in ROLES:
        resolved[role] = [s.model_copy(update={"uri": _resolve(s.uri, base), "images": _resolve(s.images, base)}) for s in getattr(catalog, role)]
    return Catalog(**resolved)


def load_catalog(uri: str | Path) -> Catalog:
    """A catalog file (YAML or JSON; local path, file:// or s3://) -> validated Catalog, or one-line UserError."""
    uri = str(uri)
    try:
        text = store.read_text(uri)
    except FileNotFoundError:
        raise UserError(f"catalog error: no such file: {uri}") from None
    except IsADirectoryError:
        raise UserError(f"catalog error: {uri} is a folder; give the catalog file") from None
    try:
        data = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise UserError(f"catalog error: {uri} is not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    base = uri.rsplit("/", 1)[0] if store.is_remote(uri) else str(store.local_path(uri).resolve().parent)
    return catalog_from_dict(data, base, where=uri)


def folder_catalog(folder: str | Path) -> Catalog:
    """The folder contract: a folder without a catalog file is a catalog whose roles are its
    `<role>.jsonl` (or `<role>.json`) files, images relative to the folder, ids kept as they are
    (one folder is one namespace)."""
    folder = Path(folder).resolve()
    roles = {}
    for role in ROLES:
        found = [folder / f"{role}{ext}" for ext in (".jsonl", ".json") if (folder / f"{role}{ext}").is_file()]
        if found:
            roles[role] = [Source(uri=str(found[0]), images=str(folder), prefix_ids=False)]
    if not roles:
        raise UserError(f"{folder}: no catalog.yaml and no <role>.jsonl file (roles: {', '.join(ROLES)})")
    return Catalog(**roles)


def dump_catalog(catalog: Catalog) -> str:
    """YAML text of a catalog (only the roles that have sources, only non-default fields)."""
    data = {r: [{"name": s.name, **s.model_dump(exclude_defaults=True, exclude={"name"})} for s in getattr(catalog, r)] for r in catalog.roles()}
    return yaml.safe_dump(data, sort_keys=False)


def run_catalog(folder: str | Path) -> Catalog:
    """The run's data catalog, as the world step left it: `folder/catalog.yaml` (relative paths resolve
    against it), or, in a folder without one, its `<role>.jsonl` files (folder_catalog)."""
    folder = Path(folder)
    return load_catalog(folder / "catalog.yaml") if (folder / "catalog.yaml").is_file() else folder_catalog(folder)
