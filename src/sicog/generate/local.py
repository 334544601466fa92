"""In-process candidate sampler on transformers `generate` (the local backend of SICOG step 2).

Why sampling is done as "greedy over noised logits": `generate(do_sample=True)` draws every row of a
batch from one global RNG, so a candidate's text would depend on which other requests share its
batch, on the batch size and on the sort order. Here each candidate's randomness is a hash of its
request's seed (derived from cycle seed, record id and candidate index), the decoding step and the
token id, computed on the model's device (`sicog.generate.noise`), and the Gumbel-max trick turns
that noise into an exact sample: with G ~ Gumbel(0, 1), argmax(logits / T + G) is distributed as
softmax(logits / T). Temperature and top-p are transformers' own warpers (paper Sec. 3.2: T = 0.7,
top_p = 0.95); top-p sets dropped tokens to -inf, which stays -inf after the (finite) noise.
`greedy=True` (evaluation) uses neither noise nor warpers.

Throughput: requests are sorted by prompt length and decoded `batch_size` at a time with left
padding and the KV cache, image and text-only requests in separate batches; rows carry their ids,
so output order does not matter to any caller.

Bad input: a request whose image is missing, corrupt, outside the image root or over the pixel
limit, or whose prompt does not fit the model's context, yields an error row
(`"text": None, "error": reason`) instead of stopping the run.

Models: a LLaVA folder, or a causal-LM folder (the backbone LLM that answers text-only prompts,
paper App. A; see `sicog.generate.backbone`). A causal LM gets the same chat template, seeds and
warpers; an image request to it is an error row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from sicog.data.images import open_image
from sicog.generate.backbone import is_multimodal
from sicog.generate.backbone import model_name as model_name_of
from sicog.generate.noise import GumbelNoise
from sicog.models import load_model, num_image_tokens, to_messages
from sicog.records import IMAGE_TOKEN


def _load_causal_lm(model_dir: Path, trust_remote_code: bool, dtype: str):
    """(model, tokenizer) of a text-only causal-LM folder, on CPU in `dtype`, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    model.eval()
    return model, tokenizer


class LocalSampler:
    """Batched, per-candidate-seeded sampling from a model directory.

    `output_tokens` counts the tokens generated so far (up to and including each row's eos), for
    throughput figures.
    """

    def __init__(
        self,
        model_dir: str | Path,
        image_root: str | Path,
        batch_size: int = 64,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 0.95,
        min_new_tokens: int = 0,
        device: str | None = None,
        trust_remote_code: bool = False,
        model_name: str | None = None,
        dtype: str = "auto",
    ):
        """`model_name`: what candidates record in `model` (default: `backbone.model_name` of the folder).
        `dtype`: "auto" samples in the dtype the folder was saved in, which is the config's
        (TrainConfig.weights_dtype: every model a cycle trains or assembles is saved in it)."""
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        self.model_dir = Path(model_dir)
        self.model_name = model_name or model_name_of(self.model_dir)
        self.image_root = image_root  # for relative image paths; catalog records carry absolute URIs
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens  # > 0 only for benchmarks that need fixed-length outputs
        self.temperature = temperature
        self.top_p = top_p
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.multimodal = is_multimodal(self.model_dir)
        if self.multimodal:
            self.model, self.processor = load_model(self.model_dir, trust_remote_code=trust_remote_code, dtype=dtype)
            self.tokenizer = self.processor.tokenizer
            self.max_positions = self.model.config.text_config.max_position_embeddings
            self.image_tokens = num_image_tokens(self.processor)
        else:  # the backbone LLM: text only
            self.model, self.tokenizer = _load_causal_lm(self.model_dir, trust_remote_code, dtype)
            self.processor = None
            self.max_positions = self.model.config.max_position_embeddings
            self.image_tokens = 0
        self.model.to(self.device)
        self.tokenizer.padding_side = "left"  # decoder-only batching: new tokens line up on the right
        self.eos_id = self.tokenizer.eos_token_id
        self.output_tokens = 0

    def _chat_text(self, req: dict) -> str:
        has_image = "image" in req
        if not self.multimodal:
            # Plain string content: any LM's own chat template renders it (ours renders it as a text item).
            system = [{"role": "system", "content": req["system"]}] if req.get("system") else []
            messages = [*system, {"role": "user", "content": req["prompt"]}]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        human = f"{IMAGE_TOKEN}\n{req['prompt']}" if has_image else req["prompt"]
        messages = to_messages([{"from": "human", "value": human}], has_image=has_image, system=req.get("system"))
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _row(self, req: dict, text: str | None, error: str | None = None) -> dict:
        row = {**req, "text": text, "model": self.model_name}
        if error is not None:
            row["error"] = error
        return row

    def generate(self, requests: list[dict], greedy: bool = False, progress=None) -> Iterator[dict]:
        """Candidate rows (request + "text", "model"; "error" on failure), in no particular order."""
        task_id = progress.add_task("sampling" if not greedy else "decoding", total=len(requests)) if progress else None
        prepared = []
        for req in requests:
            if "image" in req and not self.multimodal:
                yield self._row(req, None, f"{self.model_name} is a text-only LLM: it takes no image")
                if progress:
                    progress.advance(task_id)
                continue
            text = self._chat_text(req)
            length = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if "image" in req:
                length += self.image_tokens - 1
            if length + self.max_new_tokens > self.max_positions:
                yield self._row(req, None, f"prompt too long: {length} + {self.max_new_tokens} new tokens > {self.max_positions} positions")
                if progress:
                    progress.advance(task_id)
                continue
            prepared.append((("image" in req), length, req, text))
        for has_image in (True, False):
            group = sorted((p for p in prepared if p[0] == has_image), key=lambda p: p[1])
            for start in range(0, len(group), self.batch_size):
                batch = group[start : start + self.batch_size]
                yield from self._generate_batch([(req, text) for _, _, req, text in batch], has_image, greedy)
                if progress:
                    progress.advance(task_id, len(batch))

    def generate_chunks(self, chunks: list[list[dict]], advance=None) -> Iterator[tuple[int, list[dict]]]:
        """(chunk index, rows) chunk after chunk: the sharded writer publishes each one as it comes.
        `advance(n)` is called as candidates finish (progress bars)."""
        for k, chunk in enumerate(chunks):
            rows = list(self.generate(chunk))
            if advance:
                advance(len(chunk))
            yield k, rows

    def _generate_batch(self, batch: list[tuple[dict, str]], has_image: bool, greedy: bool) -> Iterator[dict]:
        images = []
        ok: list[tuple[dict, str]] = []
        for req, text in batch:
            if has_image:
                try:
                    images.append(open_image(req["image"], self.image_root))
                except ValueError as exc:
                    yield self._row(req, None, str(exc))
                    continue
            ok.append((req, text))
        if not ok:
            return
        texts = [text for _, text in ok]
        # The rendered chat text already holds every special token the template wants (Llama 3's opens
        # with BOS); a tokenizer that adds BOS itself would put a second one in front of it.
        if self.multimodal:
            inputs = self.processor(text=texts, images=images or None, padding=True, add_special_tokens=False, return_tensors="pt").to(self.device)
        else:
            inputs = self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt").to(self.device)
        config = GenerationConfig(
            do_sample=False,  # sampling happens through the per-row Gumbel noise below
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=self.min_new_tokens or None,
            eos_token_id=self.eos_id,
            pad_token_id=self.tokenizer.pad_token_id,
            use_cache=True,
        )
        processors = LogitsProcessorList()
        if not greedy:
            processors.extend(
                [
                    TemperatureLogitsWarper(self.temperature),
                    TopPLogitsWarper(self.top_p),
                    GumbelNoise([req["seed"] for req, _ in ok]),
                ]
            )
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=config, logits_processor=processors)
        new = out[:, inputs["input_ids"].shape[1] :].cpu()
        for (req, _), tokens in zip(ok, new):
            ends = (tokens == self.eos_id).nonzero()
            n = int(ends[0]) + 1 if len(ends) else len(tokens)
            self.output_tokens += n
            text = self.tokenizer.decode(tokens[:n], skip_special_tokens=True).strip()
            yield self._row(req, text)
