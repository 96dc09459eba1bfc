"""Dynamic batching: concurrent requests share one forward pass.

Requests put their (already validated) columns on a queue. One task takes the first waiting
request and everything else already queued (up to ``max_records``), scores them together (a
batch of more than a few rows in a worker thread, so that the event loop goes on reading
requests), and hands each request its slice. While a batch is being scored the next one
gathers, so under load batches grow by themselves. A batch also waits up to ``max_wait``
after its first request's arrival, but only until it serves as many requests as the last one
did: a lone request on an idle service is scored at once, and so are clients that keep in
step (their batch is complete when they have all arrived). Scores do not
depend on batch company (rows are scored in padded blocks), so batching never changes a result.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from anomaly.service.model import ServedModel

# A batch this small is scored on the event loop: it takes less time than the two thread
# hand-offs (each a wake-up of an idle core) it would otherwise cost.
_INLINE_ROWS = 64


@dataclass
class _Job:
    served: ServedModel
    columns: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, max_wait_s: float = 0.002, max_records: int = 8192):
        self.max_wait_s, self.max_records = max_wait_s, max_records
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._held: _Job | None = None  # taken from the queue but for another model's batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        self._task: asyncio.Task | None = None
        self.batches = 0  # forward passes run, for tests and logs
        self._last_jobs = 1  # requests the last batch served: the company to expect

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def score(self, served: ServedModel, columns: dict[str, np.ndarray], rows: int) -> dict:
        """The result columns for these rows (see :meth:`Detector.score_columns`)."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(served, columns, rows, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            try:
                if sum(job.rows for job in jobs) <= _INLINE_ROWS:
                    results = _score(jobs)
                else:
                    results = await loop.run_in_executor(self._executor, _score, jobs)
            except Exception as exc:  # a bug, not bad input (input was checked before)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches += 1
            self._last_jobs = len(jobs)
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():  # the client may have gone
                    job.future.set_result(result)

    async def _gather(self) -> list[_Job]:
        first = self._held or await self._queue.get()
        self._held = None
        jobs, rows = [first], first.rows
        deadline = first.arrived + self.max_wait_s
        while rows < self.max_records:
            try:
                if self._queue.empty():
                    if len(jobs) >= self._last_jobs:  # as many as last time: go
                        break
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    job = await asyncio.wait_for(self._queue.get(), timeout)
                else:
                    job = self._queue.get_nowait()
            except TimeoutError:
                break
            if job.served is not first.served or rows + job.rows > self.max_records:
                self._held = job  # a hot reload happened, or it does not fit: next batch
                break
            jobs.append(job)
            rows += job.rows
        return jobs


def _score(jobs: list[_Job]) -> list[dict]:
    """One forward pass over every job's rows; each job gets its own slice back."""
    detector = jobs[0].served.detector
    if len(jobs) == 1:
        columns = jobs[0].columns
    else:
        columns = {
            name: np.concatenate([job.columns[name] for job in jobs]) for name in jobs[0].columns
        }
    result = detector.score_columns(columns)
    jobs[0].served.record(result["anomaly_score"], result["is_anomaly"])
    out, start = [], 0
    for job in jobs:
        end = start + job.rows
        out.append(
            {
                "anomaly_score": result["anomaly_score"][start:end],
                "is_anomaly": result["is_anomaly"][start:end],
                "p_value": result["p_value"][start:end],
                "top_features": result["top_features"].slice(start, job.rows),
            }
        )
        start = end
    return out
