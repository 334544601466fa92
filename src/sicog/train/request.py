"""What one training stage is asked to do: the file every training rank reads.

`python -m sicog.train REQUEST_URI` (see __main__.py) is the one entry point of a training process,
under torchrun on this machine and in the pods of a cluster job alike; the request travels as JSON
at any store URI (a local file, file://, s3://). `STAGES` is the one list of stage names; the
training-data names are sicog.data.training.TRAIN_DATA.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sicog import store
from sicog.config import SicogConfig, validate_config
from sicog.data.training import TRAIN_DATA, check_data
from sicog.errors import UserError

__all__ = ["STAGES", "TRAIN_DATA", "TrainRequest", "check_stage"]

# Training stages (paper Table 13): step-1 warm-up, stage 1 (projector), 1.5 (pretrain), 2 (instruct); dpo: step 1's DPO variant.
STAGES = ("warmup", "align", "pretrain", "instruct", "dpo")


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}: choose {', '.join(STAGES)}")
    return stage


class TrainRequest(BaseModel):
    """One stage of training: train `model` on `data` (or, stage dpo, on `pairs`) into `out`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: dict = Field(description="The run's whole config (SicogConfig as JSON).")
    stage: str = Field(description=f"One of {', '.join(STAGES)}: the config section train.<stage> it trains with.")
    data: str = Field(description="A training-data name (sicog.data.training.TRAIN_DATA); stage dpo: names the task.")
    name: str = Field(description="The run name, e.g. cycle/pretrain: lineage, logs, the timings row train:<name>, the job's name.")
    model: str = Field(description="URI of the model to start from (a save_pretrained folder).")
    world: str = Field(description="URI of the world step's folder (its catalog.yaml; image paths resolve against it).")
    out: str = Field(description="URI of the output folder: where the trained model is written, once.")
    curated: str | None = Field(None, description="URI of the curate step's folder (data curated / uncurated).")
    pairs: str | None = Field(None, description="URI of a preference-pairs folder (stage dpo).")
    resume: bool = Field(False, description="Continue from the last checkpoint under out/checkpoints, if there is one.")

    def model_post_init(self, context) -> None:
        check_stage(self.stage)
        check_data(self.data)
        if self.stage == "dpo" and not self.pairs:
            raise UserError("stage dpo needs preference pairs (sicog dpo-pairs)")

    @classmethod
    def of(cls, config: SicogConfig | dict, **fields) -> TrainRequest:
        """A request carrying `config` (validated first, so a bad config fails here, in one line)."""
        cfg = config if isinstance(config, SicogConfig) else validate_config(config)
        return cls(config=cfg.model_dump(mode="json"), **fields)

    @property
    def cfg(self) -> SicogConfig:
        return validate_config(self.config)

    def uris(self) -> dict[str, str]:
        """Every store URI it names, by field (those given)."""
        return {key: getattr(self, key) for key in ("model", "world", "out", "curated", "pairs") if getattr(self, key)}

    def save(self, uri: str) -> str:
        store.write_text(uri, self.model_dump_json(indent=1))
        return uri

    @classmethod
    def load(cls, uri: str) -> TrainRequest:
        try:
            return cls.model_validate_json(store.read_text(uri))
        except ValidationError as exc:
            error = exc.errors()[0]
            raise UserError(f"{uri}: not a training request: {'.'.join(map(str, error['loc']))}: {error['msg']}") from None
