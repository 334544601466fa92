"""Component: where this run's cycle starts (a fresh model, or the series' last successful cycle)."""

from typing import NamedTuple

from kfp import dsl

from sicog.components._image import IMAGE


@dsl.component(base_image=IMAGE)
def start_cycle(config: dict, series_uri: str, work_uri: str, run_id: str) -> NamedTuple("Cycle", config=dict, work_uri=str):
    """Output: the config every later step uses (in a series: the last successful cycle's model as
    model.start, cycle number + 1) and the run's work_uri (in a series, unless given:
    SERIES/cycles/<UTC time>-<run id>). Resolved at run time, so a schedule's runs chain up."""
    from collections import namedtuple

    from sicog import lineage

    config, work_uri = lineage.start_cycle(config, series_uri, work_uri, run_id)
    return namedtuple("Cycle", ["config", "work_uri"])(config, work_uri)
