"""Remote candidate sampler: chat completions against TGI or any OpenAI-compatible engine.

At scale SICOG step 2 dominates a cycle's cost (paper: ~13 h on 32 A100s for CoD captions with HF
generate at batch size 1). A serving engine with continuous batching (TGI, vLLM, SGLang) is only fast
when its batch is full, so this client keeps `concurrency` requests in flight at all times, across
chunk boundaries, through `huggingface_hub`'s AsyncInferenceClient.

Requests and seeds: every candidate has its own `seed` (derived from cycle seed, record id and
candidate index) so that a redone chunk asks for exactly the same samples. vLLM and SGLang take `n`:
the candidates that share a prompt (the 2 CoD captions of an image, the 3 answers of a text prompt)
go as one request, seeded with the first one's seed, so the image is encoded and prefilled once. TGI
ignores `n` (and caps `best_of`), `transformers serve` refuses it: one request per candidate. An
engine that returns fewer choices than asked gets the rest one by one, each with its own seed.
Whether the server honours the seed per request is the server's business: TGI, vLLM and SGLang do;
`transformers serve` sets a process-wide torch seed, so under concurrency its samples are not
reproducible (ids, indices and seeds still are).

Images travel as data URIs, after the same checks as the local sampler (missing, corrupt, outside
the image root, over the pixel limit -> an error row, no request). With `image_edge` they are first
resized so that their shorter side is at most that many pixels (the sampling model's input size):
a 4000x3000 photo for a 336-pixel CLIP costs the server a 12-MP decode and the wire 50x the bytes.

Failures: 429, 5xx, timeouts and connection errors are retried under the project's retry policy
(sicog.retry: exponential backoff with jitter, at most `max_attempts`; a `Retry-After` header is
honoured); other 4xx are the request's fault and are not retried.
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


# Engines that answer `n` choices per chat completion (TGI ignores it; transformers serve refuses it).
N_ENGINES = {"vllm", "sglang"}


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
    """The request's user turn in OpenAI/TGI chat format: image part first (as in LLaVA data), then text."""
    if "image" not in req:
        return [{"role": "user", "content": req["prompt"]}]
    url = image_data_uri(req["image"], image_root, edge)
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": req["prompt"]}]}]


def prompt_groups(requests: list[dict], share: bool) -> list[list[dict]]:
    """Consecutive requests with the same record, prompt and image, as one group each (share=True),
    else one group per request. plan_requests lists a record's candidates together, format by format."""
    groups: list[list[dict]] = []
    for req in requests:
        key = (req["id"], req["prompt"], req.get("image"))
        if share and groups and (groups[-1][0]["id"], groups[-1][0]["prompt"], groups[-1][0].get("image")) == key:
            groups[-1].append(req)
        else:
            groups.append([req])
    return groups


def _retry_decision(exc: Exception) -> tuple[bool, str, float | None]:
    """(retry?, reason, server-requested delay) for an exception raised by one request."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

    if isinstance(exc, InferenceTimeoutError | asyncio.TimeoutError | httpx2.TimeoutException):
        return True, "timeout", None
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        body = exc.response.text[:300].replace("\n", " ")
        retry_after = exc.response.headers.get("retry-after")
        delay = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
        return status in RETRY_STATUS, f"HTTP {status}: {body}", delay
    if isinstance(exc, httpx2.TransportError):
        return True, f"connection error: {type(exc).__name__}: {exc}", None
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


def _endpoint_client(endpoint: str, timeout_s: float):
    """An AsyncInferenceClient for our own endpoint that works with HF_HUB_OFFLINE=1.

    huggingface_hub's HTTP session refuses every request in offline mode, our own server included;
    clusters set HF_HUB_OFFLINE to keep model loading off the Hub, not to stop sampling. The session
    still comes from huggingface_hub's (configurable) factory, minus that one guard.
    """
    from huggingface_hub import AsyncInferenceClient
    from huggingface_hub.utils import get_async_session
    from huggingface_hub.utils._http import async_hf_request_event_hook

    class EndpointClient(AsyncInferenceClient):
        async def _get_async_client(self):
            if self._async_client is None:
                session = get_async_session()
                session.event_hooks["request"] = [h for h in session.event_hooks["request"] if h is not async_hf_request_event_hook]
                self._async_client = await self.exit_stack.enter_async_context(session)
            return self._async_client

    return EndpointClient(base_url=endpoint, timeout=timeout_s)


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
            return await client.chat_completion(
                messages,
                model=self.served_model,
                max_tokens=max_tokens or self.max_new_tokens,
                temperature=self.temperature if temperature is None else temperature,
                top_p=self.top_p,
                seed=seed,
                n=n if n > 1 else None,
            )

        try:
            out = await retry.acall(attempt, _retryable, attempts=self.max_attempts, first_s=BACKOFF_BASE_S, max_s=BACKOFF_CAP_S,
                                    retry_after=_retry_after, what=f"sample {self.endpoint}", level=logging.INFO,
                                    describe=lambda exc: _retry_decision(exc)[1])
        except Exception as exc:  # noqa: BLE001 - classified here; anything that is no server condition is re-raised
            _, reason, _ = _retry_decision(exc)
            return None, f"after {tried} attempt(s): {reason}"
        if out.usage is not None:
            self.output_tokens += out.usage.completion_tokens
        return out, None

    async def _group(self, client, reqs: list[dict], max_tokens: int | None = None, temperature: float | None = None) -> list[dict]:
        """Rows for candidates that share one prompt: one request with n = len(reqs), seeded by the first
        candidate; choices missing from the answer are asked one by one with their own seeds."""
        try:
            messages = chat_messages(reqs[0], self.image_root, self.image_edge)
        except ValueError as exc:
            return [self._row(req, None, error=str(exc)) for req in reqs]
        rows: list[dict] = []
        while len(rows) < len(reqs):
            todo = reqs[len(rows):] if len(rows) == 0 else reqs[len(rows):len(rows) + 1]
            out, error = await self._request(client, messages, todo[0]["seed"], len(todo), max_tokens, temperature)
            if out is None:
                rows += [self._row(req, None, error=error) for req in todo]
                continue
            for req, choice in zip(todo, out.choices or []):
                text = choice.message.content if choice.message is not None else None
                if text is None:
                    rows.append(self._row(req, None, error="server returned no message content"))
                else:
                    rows.append(self._row(req, text.strip(), model=self.served_model or out.model))
            if not out.choices and len(todo) == 1:
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
