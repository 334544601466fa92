"""A local OpenAI-compatible server for a model folder: `transformers serve`, started and stopped here.

The remote sampler talks to TGI on a cluster; on a laptop, in tests and in the benchmark it talks to
`transformers serve` (transformers' own OpenAI-compatible server) on loopback, so the same client
code path runs everywhere. What that server does and does not do (transformers 5.x), read from its
source and checked against it:
- it serves a local folder offline (`HF_HUB_OFFLINE=1`), pinned with `force_model`; requests must
  name that folder as `model` (anything else is a 400);
- continuous batching (`--continuous-batching`) applies to text-only causal LMs only; an image-text
  model (our LLaVA) falls back to one `generate` at a time. Image parts (`image_url` data URIs) work;
- it samples only if the model's generation config says `do_sample` (TGI samples whenever a
  temperature is given), hence `sampling_copy`;
- `seed` sets the process-wide torch seed, so concurrent samples are not reproducible per request
  (TGI seeds each request).
- `GET /v1/models` fails without a hub cache folder; readiness is `GET /health`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx2

from sicog import retry

_LISTENING = re.compile(r"Uvicorn running on (http://[\d.]+:\d+)")


def sampling_copy(model_dir: str | Path, out_dir: str | Path, text_only: bool = False) -> Path:
    """A copy of a model folder that `transformers serve` samples from (do_sample in its generation
    config). `text_only=True` saves only the language model (as a Qwen2/causal-LM folder with the
    tokenizer): the paper's text-only prompts are answered by the backbone LLM, and only causal LMs
    get continuous batching."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from sicog.models import load_model

    out_dir = Path(out_dir)
    if not text_only:
        shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    else:
        model, processor = load_model(model_dir, dtype="auto")  # the backbone keeps the folder's dtype
        lm = AutoModelForCausalLM.from_config(model.config.text_config, dtype=model.dtype)
        state = {k.replace("model.language_model.", "model."): v for k, v in model.state_dict().items() if k.startswith("model.language_model.")}
        state["lm_head.weight"] = model.lm_head.weight
        lm.load_state_dict(state)
        lm.save_pretrained(out_dir)
        processor.tokenizer.save_pretrained(out_dir)
        config = json.loads((out_dir / "tokenizer_config.json").read_text())
        config.pop("processor_class", None)  # else AutoProcessor would look for the image processor
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    gen = GenerationConfig.from_pretrained(model_dir)
    gen.do_sample = True
    gen.save_pretrained(out_dir)
    return out_dir


class TransformersServer:
    """`transformers serve <model_dir>` on 127.0.0.1, a port chosen by the OS; a context manager.

    `base_url` is the OpenAI-style base (`http://127.0.0.1:PORT/v1`); `model` the name to send.
    """

    def __init__(self, model_dir: str | Path, continuous_batching: bool = True, extra_args: list[str] | None = None, startup_s: float = 120):
        self.model = str(model_dir)
        self.args = [self.model, "--host", "127.0.0.1", "--port", "0", *(["--continuous-batching"] if continuous_batching else []), *(extra_args or [])]
        self.startup_s = startup_s
        self.proc: subprocess.Popen | None = None
        self.url = ""

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> "TransformersServer":
        cli = Path(sys.executable).with_name("transformers")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        fd, self.log_path = tempfile.mkstemp(prefix="transformers-serve-", suffix=".log")
        os.close(fd)
        with open(self.log_path, "a") as log:  # append mode: the server's writes and our reads never share an offset
            self.proc = subprocess.Popen([str(cli), "serve", *self.args], stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
        if retry.poll(self._healthy, every_s=0.2, budget_s=self.startup_s) is None:
            self.stop()
            raise RuntimeError(f"transformers serve did not start in {self.startup_s:.0f} s:\n{self.output()[-3000:]}")
        return self

    def _healthy(self) -> bool | None:
        """True once the server listens and answers /health; None while it starts; RuntimeError if it exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
        found = _LISTENING.search(self.output())
        if found:
            self.url = found.group(1)
            if httpx2.get(f"{self.url}/health", timeout=5).status_code == 200:
                return True
        return None

    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            Path(self.log_path).unlink(missing_ok=True)

    def __enter__(self) -> "TransformersServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
