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
    run_uri: str = "",
    run_id: str = "",
):
    """Output: metrics.json + report.html, also copied into the run's folder `run_uri` when given.
    Last, with a run_uri: lineage.json there (inputs, models, scores, data counts, config, code version
    and the promotion decision), which makes this cycle, if promoted, the starting point of the next one
    in its series (sicog.lineage)."""
    import shutil

    from sicog import store
    from sicog.steps import StepIO
    from sicog.steps.report import report as run
    from sicog.steps.series import seal_cycle

    inputs = {
        "world": world.path,
        "curation": curated.path,
        "evaluation": evaluation.path,
        "warmups": {"perception": perception.path, "reasoning": reasoning.path},
    }
    metrics = run(config, StepIO("report", cycle_report.path, inputs))
    shutil.copyfile(f"{cycle_report.path}/report.html", report_html.path)
    if run_uri:
        for name in ("metrics.json", "report.html"):
            store.write_bytes(store.join(run_uri, name), open(f"{cycle_report.path}/{name}", "rb").read())
        models = {"base": base.uri, "cycle": cycle.uri, "perception": perception.uri, "reasoning": reasoning.uri}
        seal_cycle(config, run_uri, run_id, models, {"world": world.uri, "curated": curated.uri}, metrics)
