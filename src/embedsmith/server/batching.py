"""Dynamic batching: concurrent embedding requests are coalesced into one encoder call, off the event loop.

Requests wait in a queue. A single worker task takes the first one, gathers whatever else arrives within
``max_wait_s`` (up to ``max_batch`` texts), and encodes the lot in a worker thread while the next batch
gathers. Many small clients thus get the throughput of large batches. The wait is skipped while requests
come one at a time (the last batch held a single request), so a lone client pays no batching latency.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import EmbedsmithError
from ..quantization import l2_normalize, truncate_dims
from ..types import Encoder, Kind


class QueueFullError(EmbedsmithError):
    """More texts are waiting than the server accepts; the client should retry later (HTTP 429)."""


@dataclass
class _Pending:
    texts: list[str]
    kind: Kind | None
    dims: int | None
    side: str  # truncation side: 'right' or 'left'
    future: asyncio.Future[tuple[np.ndarray, list[int]]]


@dataclass
class BatchStats:
    """What the batcher has done, for /metrics. Counts only grow."""

    batches: int = 0
    texts: int = 0
    tokens: int = 0
    # Histogram of texts per batch: upper bounds and cumulative counts (Prometheus style).
    size_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    size_counts: list[int] = field(default_factory=lambda: [0] * 11)

    def observe(self, size: int, tokens: int) -> None:
        self.batches += 1
        self.texts += size
        self.tokens += tokens
        for i, bound in enumerate(self.size_buckets):
            if size <= bound:
                self.size_counts[i] += 1
                return
        self.size_counts[-1] += 1


class EmbeddingBatcher:
    """Coalesces ``embed`` calls for one encoder.

    Args:
        encoder: the encoder all requests share.
        max_batch: texts per encoder call (a larger request is split into parts of this size, never refused).
        max_wait_s: how long the first request of a batch waits for company.
        max_queue: texts allowed to wait; beyond it :meth:`embed` raises :class:`QueueFullError`.
    """

    def __init__(self, encoder: Encoder, *, max_batch: int = 128, max_wait_s: float = 0.002,
                 max_queue: int = 8192) -> None:
        self.encoder = encoder
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_texts = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_requests = 2  # requests in the last batch; start by waiting for company
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embedsmith-encode-{encoder.name}")
        self._stats_lock = threading.Lock()

    @property
    def queue_depth(self) -> int:
        """Texts waiting for a batch (not counting the one being encoded)."""
        return self._queued_texts

    def start(self) -> None:
        """Start the worker task on the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.encoder.name}")

    async def stop(self) -> None:
        """Stop the worker; waiting requests fail with an error."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(EmbedsmithError("the server is shutting down"))
        self._queued_texts = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def embed(self, texts: list[str], *, kind: Kind | None = None, dims: int | None = None,
                    truncation_side: str = "right") -> tuple[np.ndarray, list[int]]:
        """Encode ``texts`` (already checked) in whatever batch forms.

        Returns:
            float32 unit vectors of shape [len(texts), dims or dim], and each text's token count before any
            cut (prompt and special tokens included).

        Raises:
            QueueFullError: the queue holds ``max_queue`` texts already.
        """
        if self._queued_texts and self._queued_texts + len(texts) > self.max_queue:
            raise QueueFullError(
                f"the server is busy: {self._queued_texts} texts are waiting (limit {self.max_queue}); retry later"
            )
        self.start()
        loop = asyncio.get_running_loop()
        parts: list[asyncio.Future[tuple[np.ndarray, list[int]]]] = []
        for start in range(0, len(texts), self.max_batch):  # a large request travels as several batches
            future: asyncio.Future[tuple[np.ndarray, list[int]]] = loop.create_future()
            part = texts[start : start + self.max_batch]
            self._queue.append(_Pending(part, kind, dims, truncation_side, future))
            self._queued_texts += len(part)
            parts.append(future)
        assert self._wakeup is not None
        self._wakeup.set()
        if len(parts) == 1:
            return await parts[0]
        try:
            done = await asyncio.gather(*parts)
        except BaseException:
            for f in parts:
                f.cancel()
            raise
        return np.concatenate([v for v, _ in done]), [n for _, lengths in done for n in lengths]

    def _take(self, limit: int) -> list[_Pending]:
        """Pop queued requests in order while they fit in ``limit`` texts (always at least one)."""
        taken: list[_Pending] = []
        size = 0
        while self._queue:
            head = self._queue[0]
            if taken and size + len(head.texts) > limit:
                break
            taken.append(self._queue.popleft())
            size += len(head.texts)
            self._queued_texts -= len(head.texts)
        return taken

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._take(self.max_batch)
            size = sum(len(p.texts) for p in batch)
            # Wait for company only when requests have been arriving together: a lone client (the last batch
            # held one request) gets its answer without the wait, which is then pure latency.
            deadline = loop.time() + (self.max_wait_s if self._last_requests > 1 else 0.0)
            while size < self.max_batch:
                if not self._queue:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), left)
                    except TimeoutError:
                        break
                    continue
                if size + len(self._queue[0].texts) > self.max_batch:
                    break
                more = self._take(self.max_batch - size)
                batch += more
                size += sum(len(p.texts) for p in more)
            self._last_requests = len(batch)
            batch = [p for p in batch if not p.future.cancelled()]
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._encode, batch)
            except Exception as exc:
                if len(batch) == 1:
                    if not batch[0].future.done():
                        batch[0].future.set_exception(exc)
                    continue
                # One request's failure must not fail the others: encode them one by one.
                for p in batch:
                    try:
                        (res,) = await loop.run_in_executor(self._executor, self._encode, [p])
                    except Exception as one:
                        if not p.future.done():
                            p.future.set_exception(one)
                    else:
                        if not p.future.done():
                            p.future.set_result(res)
                continue
            for p, res in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(res)

    def _encode(self, batch: list[_Pending]) -> list[tuple[np.ndarray, list[int]]]:
        """In the worker thread: one encoder call per (prompt kind, truncation side), then each request's dims
        and norm. Each text is tokenized once where the encoder can (``embed_counted``)."""
        out: list[tuple[np.ndarray, list[int]] | None] = [None] * len(batch)
        groups: dict[tuple[Kind | None, str], list[int]] = {}
        for i, p in enumerate(batch):
            groups.setdefault((p.kind, p.side), []).append(i)
        total_tokens = 0
        for (kind, side), members in groups.items():
            texts = [t for i in members for t in batch[i].texts]
            raw, lengths = _embed_counted(self.encoder, texts, kind, side)
            start = 0
            for i in members:
                n = len(batch[i].texts)
                part = raw[start : start + n]
                vecs = truncate_dims(part, batch[i].dims) if batch[i].dims else l2_normalize(part)
                out[i] = (np.ascontiguousarray(vecs, dtype=np.float32), list(lengths[start : start + n]))
                start += n
            total_tokens += sum(min(n, self.encoder.max_tokens) for n in lengths)
        with self._stats_lock:
            self.stats.observe(sum(len(p.texts) for p in batch), total_tokens)
        return [r for r in out if r is not None]


def _embed_counted(encoder: Encoder, texts: list[str], kind: Kind | None, side: str) -> tuple[np.ndarray, list[int]]:
    """Raw vectors and token counts: in one tokenization for embedsmith's encoders, in two for any other."""
    counted = getattr(encoder, "embed_counted", None)
    if counted is not None:
        return counted(texts, kind=kind, truncation_side=side)
    return encoder.encode(texts, kind=kind, normalize=False), encoder.count_tokens(texts, kind=kind)

