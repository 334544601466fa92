"""Component: the cycle's metrics.json and report.html."""

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
    cycle_report: Output[Dataset],
    report_html: Output[HTML],
    publish_uri: str = "",
    work_uri: str = "",
):
    """Output: metrics.json + report.html; also published to `publish_uri` (a folder or s3:// URI) when given."""
    import shutil

    from sicog import steps, store

    with store.published_artifact(cycle_report.path, work_uri, "report"):
        steps.report(config, world.path, curated.path, evaluation.path, {"perception": perception.path, "reasoning": reasoning.path}, cycle_report.path)
    shutil.copyfile(f"{cycle_report.path}/report.html", report_html.path)
    if store.is_remote(publish_uri):
        store.upload_dir(cycle_report.path, publish_uri)
    elif publish_uri:
        shutil.copytree(cycle_report.path, store.local_path(publish_uri), dirs_exist_ok=True)
