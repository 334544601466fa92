"""Users' own datasets for SICOG: a catalog of sources per role, read lazily and checked.

Public API (the pipeline reads data only through these):

    load_catalog(uri) -> Catalog                  YAML/JSON file, local or s3://; UserError on a bad one
    catalog_from_dict(data, base="") -> Catalog   the same from a mapping (relative paths against `base`)
    dump_catalog(catalog) -> str                  YAML text
    run_catalog(folder) -> Catalog                the world step's output: its catalog.yaml, or its <role>.jsonl files
    Catalog.sources(role) -> list[Source]; Catalog.roles() -> roles with sources; ROLES
    open_role(catalog, role) -> RoleData          lazy: nothing is read until len() or an index
      len(data); data[i] -> dict                  a normalized record, no image read; raises Quarantined
      data.located(i) -> dict                     the same with its image as an absolute URI (read_role's form)
      data.order(seed) -> np.ndarray              one weighted, shuffled epoch of indices
      data.batches(batch_size=64, seed=None, images=True) -> Iterator[Batch]
                                                  Batch.records, .images (PIL, None if text-only), .quarantined
      data.load_images(records) -> list[Image | Quarantined | None]
    read_role(catalog, role) -> (records, quarantine)   every record, images as absolute URIs (what the cycle uses)
    open_image(image, root=None) -> RGB Image     one image: an absolute URI from read_role, or a path under root
    check_catalog(catalog, roles=None) -> dict;  render_report(report) -> rich Table   (`sicog data check`)
    Quarantined(reason, detail)                   a bad row; `reason` is a stable key for counting

Modules: catalog (the pydantic model), formats (JSON array / JSONL / HF readers with a streaming
index), normalize (raw row -> LLaVA record, ids, `<image>` and system turns), images (located,
fetched and checked per batch), dataset (SourceData / RoleData), check (the report).
The demo world writes its own catalog with `sicog.world.world_catalog(world_dir)`.
"""

from sicog.data.catalog import ROLES, Catalog, Source, catalog_from_dict, dump_catalog, load_catalog, run_catalog
from sicog.data.check import check_catalog, render_report
from sicog.data.dataset import Batch, RoleData, SourceData, open_role, read_role
from sicog.data.images import open_image
from sicog.data.normalize import Quarantined, content_id

__all__ = [
    "ROLES",
    "Batch",
    "Catalog",
    "Quarantined",
    "RoleData",
    "Source",
    "SourceData",
    "catalog_from_dict",
    "check_catalog",
    "content_id",
    "dump_catalog",
    "load_catalog",
    "open_image",
    "open_role",
    "read_role",
    "render_report",
    "run_catalog",
]
