"""`python -m sicog.train REQUEST_URI`: what every training rank runs.

Under torchrun on this machine (sicog.train.backends.torchrun) and in the pods of a cluster job
(backends.trainjob, backends.pytorchjob) alike; REQUEST_URI is a TrainRequest as JSON (a local file or any store URI).
People run `sicog train` / `sicog warmup`, which write a request and start torchrun on it.
A user error (a bad request, config or batch, a missing input) is one line on stderr and exit status 2.
Logs follow sicog.logs (JSON lines with SICOG_LOG_FORMAT=json, the trainer image's default); the
summary on stdout stays one JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import sys

USAGE = "usage: python -m sicog.train REQUEST_URI  (a TrainRequest as JSON; people run `sicog train`)"
SUMMARY = ("steps", "records", "train_seconds", "tokens_per_second", "world_size", "gradient_accumulation_steps", "skipped")


def _error(text: str) -> None:
    from sicog import logs

    if logs.json_enabled():
        logging.getLogger("sicog.train").error(text)
    else:
        print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from sicog import logs
    from sicog.errors import UserError
    from sicog.store import StoreError
    from sicog.train.request import TrainRequest
    from sicog.train.run import run_request

    logs.configure()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        _error(USAGE)
        return 2
    try:
        request = TrainRequest.load(args[0])
        with logs.context(step=f"train:{request.name}", cycle=request.cfg.cycle):
            log = run_request(request)
    except (UserError, StoreError, FileNotFoundError) as exc:
        if os.environ.get("SICOG_DEBUG"):
            raise
        text = f"no such file: {exc.filename or exc}" if isinstance(exc, FileNotFoundError) else str(exc)
        _error(f"error: {text}")
        return 2
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({k: log[k] for k in SUMMARY if k in log}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
