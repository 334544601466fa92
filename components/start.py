"""Component: where this run's cycle starts (a fresh model, or the series' last successful cycle)."""

from typing import NamedTuple

from kfp import dsl

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def start_cycle(config: dict, series_uri: str, run_uri: str, run_id: str) -> NamedTuple("Cycle", config=dict, run_uri=str):
    """Output: the config every later step uses (in a series: the last successful cycle's model as the
    foundation model, cycle number + 1) and the run's folder (in a series, unless given:
    SERIES/cycles/<UTC time>-<run id>). Resolved at run time, so a schedule's runs chain up."""
    from collections import namedtuple

    from sicog.steps.series import start_cycle as run

    config, run_uri = run(config, series_uri, run_uri, run_id)
    return namedtuple("Cycle", ["config", "run_uri"])(config, run_uri)
