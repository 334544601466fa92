"""Remote candidate sampler: chat completions against TGI or any OpenAI-compatible engine.

At scale SICOG step 2 dominates a cycle's cost (paper: ~13 h on 32 A100s for CoD captions with HF
generate at batch size 1). A serving engine with continuous batching (TGI, vLLM, SGLang) is only fast
when its batch is full, so this client keeps `concurrency` requests in flight at all times, across
chunk boundaries, through one `openai.AsyncOpenAI` client.

Requests and seeds: every candidate has its own `seed` (derived from cycle seed, record id and
candidate index) so that a redone chunk asks for exactly the same samples, and every row records the
seed the engine really sampled it with. Per engine (checked against the engines' sources):
- vLLM takes `n`: the candidates that share a prompt (the 2 CoD captions of an image, the 3 answers of
  a text prompt) go as one request, so the image is encoded and prefilled once. vLLM gives choice k of
  a seeded `n` request the seed `seed + k` (vllm/v1/engine/parallel_sampling.py,
  ParentRequest._get_child_sampling_params), so the request carries the group's first candidate's
  seed and candidate k of the group is recorded with that seed + k (`engine_seeds`): a function of the
  plan alone (cycle seed, record id, the format's first index), since a chunk holds whole records and
  a record's candidates of one format are consecutive. A choice missing from the answer is asked alone
  with the same seed + k, which is what vLLM would have used for it.
- SGLang honours a request's seed (`sampling_seed`) only when launched with
  `--enable-deterministic-inference` (sicog.cluster.serving passes it), and copies one request's
  sampling params, seed included, to each of its `n` choices (GenerateReqInput._normalize_sampling_params):
  `n` choices would all be the same sample. So one request per candidate, each with its own seed.
- TGI ignores `n` (and caps `best_of`), `transformers serve` refuses it: one request per candidate.
  TGI honours the seed per request; `transformers serve` sets a process-wide torch seed, so under
  concurrency its samples are not reproducible (ids, indices and seeds still are).

Images travel as data URIs, after the same checks as the local sampler (missing, corrupt, outside
the image root, over the pixel limit -> an error row, no request). With `image_edge` they are first
resized so that their shorter side is at most that many pixels (the sampling model's input size):
a 4000x3000 photo for a 336-pixel CLIP costs the server a 12-MP decode and the wire 50x the bytes.

Transport: `openai.AsyncOpenAI` (chat.completions.create; `seed` and `n` as the engines read them),
with the client's own retries off (max_retries=0): 429, 5xx, timeouts and connection errors are
retried under the project's one retry policy (sicog.retry: exponential backoff with jitter, at most
`max_attempts`; a `Retry-After` header is honoured); other 4xx are the request's fault and are not
retried.
After the last attempt the candidate becomes an error row (`"text": None, "error": reason`), never an
empty candidate.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from sicog import retry
from sicog.data.images import image_data
from sicog.errors import UserError

BACKOFF_BASE_S = 0.5  # first retry waits 0.25-0.5 s, then up to 1, 2, 4 ... (sicog.retry's jitter)
BACKOFF_CAP_S = 30.0
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


# Engines whose `n` choices are distinct seeded samples (choice k: seed + k). SGLang answers `n` too, but
# with one seed copied to every choice; TGI ignores `n`; transformers serve refuses it.
N_ENGINES = {"vllm"}
SEED_MAX = 2**63 - 1  # engines take a signed 64-bit seed


def engine_seeds(group: list[dict]) -> list[int]:
    """The seeds the engine uses for a group of candidates sent as one `n` request: vLLM's seed + k
    from the first candidate's seed (lowered, in the rare case, so that seed + k stays a signed 64-bit int)."""
    base = min(int(group[0]["seed"]), SEED_MAX - (len(group) - 1))
    return [base + k for k in range(len(group))]


@functools.lru_cache(maxsize=64)  # a record's candidates go as 2 requests (CoD, DD): read and resize its image once
def image_data_uri(image: str, root: str | Path | None, edge: int = 0) -> str:
    """`data:<mime>;base64,...` of a record's image (a path under `root` or an absolute URI, read and
    checked by image_data); ValueError (with the reason) for a bad image. `edge` > 0: an image whose
    shorter side is longer is resized to that (bicubic, aspect kept) and re-encoded (JPEG stays JPEG at
    quality 95, anything else becomes PNG); smaller images travel as stored."""
    data = image_data(image, root)
    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format or ""
        if edge > 0 and min(im.size) > edge:
            scale = edge / min(im.size)
            small = im.convert("RGB").resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)
            fmt = "JPEG" if fmt == "JPEG" else "PNG"
            buf = io.BytesIO()
            small.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
            data = buf.getvalue()
    mime = Image.MIME.get(fmt, "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def chat_messages(req: dict, image_root: str | Path, edge: int = 0) -> list[dict]:
    """The request's user turn in OpenAI/TGI chat format: image part first (as in LLaVA data), then text;
    after a system message when the request has a `system` prompt."""
    system = [{"role": "system", "content": req["system"]}] if req.get("system") else []
    if "image" not in req:
        return [*system, {"role": "user", "content": req["prompt"]}]
    url = image_data_uri(req["image"], image_root, edge)
    return [*system, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": req["prompt"]}]}]


def prompt_groups(requests: list[dict], share: bool) -> list[list[dict]]:
    """Consecutive requests with the same record, prompt and image, as one group each (share=True),
    else one group per request. plan_requests lists a record's candidates together, format by format."""
    groups: list[list[dict]] = []
    for req in requests:
        key = (req["id"], req["prompt"], req.get("image"), req.get("system"))
        if share and groups and (groups[-1][0]["id"], groups[-1][0]["prompt"], groups[-1][0].get("image"), groups[-1][0].get("system")) == key:
            groups[-1].append(req)
        else:
            groups.append([req])
    return groups


def _retry_decision(exc: Exception) -> tuple[bool, str, float | None]:
    """(retry?, reason, server-requested delay) for an exception raised by one request."""
    import openai

    if isinstance(exc, openai.APITimeoutError | asyncio.TimeoutError):
        return True, "timeout", None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        body = (exc.response.text if exc.response is not None else str(exc))[:300].replace("\n", " ")
        retry_after = exc.response.headers.get("retry-after") if exc.response is not None else None
        delay = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
        return status in RETRY_STATUS, f"HTTP {status}: {body}", delay
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return True, f"connection error: {type(cause).__name__}: {cause}", None
    raise exc  # a bug, not a server condition


def _retryable(exc: BaseException) -> bool:
    """429, 5xx, timeouts and connection errors (not a bug: that one propagates unretried)."""
    try:
        return _retry_decision(exc)[0]
    except Exception:  # noqa: BLE001 - not a server condition: not retried, raised by the caller
        return False


def _retry_after(exc: BaseException) -> float | None:
    """The wait a server asked for (Retry-After), else None: the policy's backoff."""
    return _retry_decision(exc)[2]


def _http_client(timeout_s: float):
    """The HTTP client under the OpenAI client (tests wrap it to record the traffic); None: openai's default."""
    return None


def _endpoint_client(endpoint: str, timeout_s: float):
    """An `openai.AsyncOpenAI` for our own endpoint: no key (engines run without one), no retries of
    its own (sicog.retry is the one policy), the sampler's timeout per request."""
    import openai

    return openai.AsyncOpenAI(base_url=endpoint, api_key="EMPTY", timeout=timeout_s, max_retries=0, http_client=_http_client(timeout_s))


class RemoteSampler:
    """Per-candidate-seeded sampling through an OpenAI-compatible chat completions endpoint.

    `output_tokens` counts completion tokens reported by the server, for throughput figures;
    `attempts` counts HTTP requests sent (retries included).
    """

    def __init__(
        self,
        endpoint: str,
        image_root: str | Path,
        served_model: str = "",
        concurrency: int = 128,
        max_new_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 0.95,
        timeout_s: float = 600.0,
        max_attempts: int = 4,
        engine: str = "openai",
        share_prefill: bool = True,
        image_edge: int = 0,
    ):
        if not endpoint.startswith(("http://", "https://")):
            raise UserError(f"sample.endpoint must be an http(s) URL, got {endpoint!r}")
        if concurrency < 1 or max_attempts < 1 or max_new_tokens < 1:
            raise ValueError("concurrency, max_attempts and max_new_tokens must be >= 1")
        self.endpoint = endpoint.rstrip("/")
        self.image_root = image_root  # for relative image paths; catalog records carry absolute URIs
        self.served_model = served_model or None
        self.model_name = served_model or self.endpoint
        self.concurrency = concurrency
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.share_prefill = share_prefill and engine in N_ENGINES
        self.image_edge = image_edge
        self.output_tokens = 0
        self.attempts = 0

    def _row(self, req: dict, text: str | None, model: str | None = None, error: str | None = None) -> dict:
        row = {**req, "text": text, "model": model or self.model_name}
        if error is not None:
            row["error"] = error
        return row

    async def _request(self, client, messages: list[dict], seed: int, n: int, max_tokens: int | None, temperature: float | None):
        """One chat completion under the project's retry policy (sicog.retry: at most max_attempts, backoff
        with jitter, a Retry-After honoured): (response, None) or (None, the last error's reason)."""
        tried = 0

        async def attempt():
            nonlocal tried
            tried += 1
            self.attempts += 1
            return await client.chat.completions.create(
                messages=messages,
                model=self.served_model or "tgi",  # TGI ignores `model`; the others serve one name (served_model)
                max_tokens=max_tokens or self.max_new_tokens,
                temperature=self.temperature if temperature is None else temperature,
                top_p=self.top_p,
                seed=seed,
                **({"n": n} if n > 1 else {}),
            )

        try:
            out = await retry.acall(
                attempt,
                _retryable,
                attempts=self.max_attempts,
                first_s=BACKOFF_BASE_S,
                max_s=BACKOFF_CAP_S,
                retry_after=_retry_after,
                what=f"sample {self.endpoint}",
                level=logging.INFO,
                describe=lambda exc: _retry_decision(exc)[1],
            )
        except Exception as exc:  # noqa: BLE001 - classified here; anything that is no server condition is re-raised
            _, reason, _ = _retry_decision(exc)
            return None, f"after {tried} attempt(s): {reason}"
        if out.usage is not None:
            self.output_tokens += out.usage.completion_tokens
        return out, None

    async def _group(self, client, reqs: list[dict], max_tokens: int | None = None, temperature: float | None = None) -> list[dict]:
        """Rows for candidates that share one prompt. Alone: one request with the candidate's seed. A group
        (n engines): one request with n = len(reqs) and the seeds the engine gives its choices recorded in
        the rows (engine_seeds); choices missing from the answer are asked one by one with those same seeds."""
        if len(reqs) > 1:
            reqs = [{**req, "seed": seed} for req, seed in zip(reqs, engine_seeds(reqs))]
        try:
            messages = chat_messages(reqs[0], self.image_root, self.image_edge)
        except ValueError as exc:
            return [self._row(req, None, error=str(exc)) for req in reqs]
        rows: list[dict] = []
        while len(rows) < len(reqs):
            todo = reqs[len(rows) :] if len(rows) == 0 else reqs[len(rows) : len(rows) + 1]
            out, error = await self._request(client, messages, todo[0]["seed"], len(todo), max_tokens, temperature)
            if out is None:
                rows += [self._row(req, None, error=error) for req in todo]
                continue
            choices = sorted(out.choices or [], key=lambda c: c.index)  # choice k is the one seeded seed + k
            for req, choice in zip(todo, choices):
                text = choice.message.content if choice.message is not None else None
                if text is None:
                    rows.append(self._row(req, None, error="server returned no message content"))
                else:
                    rows.append(self._row(req, text.strip(), model=self.served_model or out.model))
            if not choices and len(todo) == 1:
                rows.append(self._row(todo[0], None, error="server returned no message content"))
        return rows

    def _client(self):
        return _endpoint_client(self.endpoint, self.timeout_s)

    async def _run(self, chunks: list[list[dict]], done: queue.Queue, stop: threading.Event, advance) -> None:
        """`concurrency` workers take requests in chunk order; a chunk is handed over when its last row is in."""
        pending = deque((k, group) for k, chunk in enumerate(chunks) for group in prompt_groups(chunk, self.share_prefill))
        rows: list[list[dict]] = [[] for _ in chunks]
        for k, chunk in enumerate(chunks):
            if not chunk:
                done.put((k, []))

        async def worker(client):
            while pending and not stop.is_set():
                k, group = pending.popleft()
                rows[k].extend(await self._group(client, group))
                if advance is not None:
                    advance(len(group))
                if len(rows[k]) == len(chunks[k]):
                    done.put((k, rows[k]))

        async with self._client() as client:
            await asyncio.gather(*(worker(client) for _ in range(min(self.concurrency, len(pending)) or 1)))

    def generate_chunks(self, chunks: list[list[dict]], advance=None) -> Iterator[tuple[int, list[dict]]]:
        """(chunk index, rows) for each chunk as soon as all of its candidates are in.

        The event loop runs in a background thread so that the caller's writes (to local disk or S3)
        never pause the requests in flight: the server's batch stays full across chunk boundaries.
        Leaving the iteration early stops the workers after their current requests. `advance(n)` is
        called (from the sampler's thread) as candidates finish, for progress bars.
        """
        done: queue.Queue = queue.Queue()
        stop = threading.Event()
        failure: list[BaseException] = []

        def run():
            try:
                asyncio.run(self._run(chunks, done, stop, advance))
            except BaseException as exc:  # surfaced in the caller's thread
                failure.append(exc)
            finally:
                done.put(None)

        thread = threading.Thread(target=run, name="remote-sampler", daemon=True)
        thread.start()
        try:
            while (item := done.get()) is not None:
                yield item
            if failure:
                raise failure[0]
        finally:
            stop.set()
            thread.join()

    def generate(self, requests: list[dict], advance=None) -> Iterator[dict]:
        """Candidate rows (request + "text", "model"; "error" on failure), in no particular order."""
        for _, rows in self.generate_chunks([requests], advance=advance):
            yield from rows

    def complete(self, requests: list[dict], max_tokens: int, temperature: float, advance=None) -> list[dict]:
        """Rows for `requests`, in their order, with explicit decoding settings (the teacher annotator's entry point)."""

        async def run():
            sem = asyncio.Semaphore(self.concurrency)
            async with self._client() as client:

                async def one(req):
                    async with sem:
                        [row] = await self._group(client, [req], max_tokens=max_tokens, temperature=temperature)
                    if advance is not None:
                        advance(1)
                    return row

                return await asyncio.gather(*(one(r) for r in requests))

        return asyncio.run(run())
