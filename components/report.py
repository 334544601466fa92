"""Component: the cycle's metrics.json and report.html, then its lineage (the seal of a finished cycle)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Model, Output

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def report(
    config: dict,
    world: Input[Dataset],
    curated: Input[Dataset],
    evaluation: Input[Dataset],
    perception: Input[Model],
    reasoning: Input[Model],
    base: Input[Model],
    cycle: Input[Model],
    cycle_report: Output[Dataset],
    report_html: Output[HTML],
    publish_uri: str = "",
    work_uri: str = "",
    run_id: str = "",
):
    """Output: metrics.json + report.html; also published to `publish_uri` (a folder or s3:// URI) when given.
    Last, with a work_uri: lineage.json there (inputs, models, scores, data counts, config, code version
    and the promotion decision), which makes this cycle, if promoted, the starting point of the next one
    in its series (sicog.lineage)."""
    import shutil

    from sicog import lineage, steps, store
    from sicog.config import validate_config

    with store.published_artifact(cycle_report.path, work_uri, "report"):
        metrics = steps.report(config, world.path, curated.path, evaluation.path, {"perception": perception.path, "reasoning": reasoning.path}, cycle_report.path)
    shutil.copyfile(f"{cycle_report.path}/report.html", report_html.path)
    if store.is_remote(publish_uri):
        store.upload_dir(cycle_report.path, publish_uri)
    elif publish_uri:
        shutil.copytree(cycle_report.path, store.local_path(publish_uri), dirs_exist_ok=True)
    if work_uri:
        uri = lambda artifact: artifact.metadata.get("store_uri") or artifact.path  # noqa: E731
        models = {"base": uri(base), "cycle": uri(cycle), "perception": uri(perception), "reasoning": uri(reasoning)}
        lineage.write_lineage(validate_config(config), work_uri, run_id, models, {"world": uri(world), "curated": uri(curated)}, metrics)
