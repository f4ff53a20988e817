"""The training cache built by a Ray pool, one task per slide: ``python -m training.cluster cache``.

The output is that of ``python -m training.data.cache`` with the same arguments: each worker runs
:func:`training.data.cache.cache_slide` into the cache folder, which every node must see at the
same path (shared storage, as the TIFs); the driver then writes the index tables. It resumes the
same way: a slide whose ``slide.json`` exists is not cached again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from stages.config import CascadeConfig
from training.cluster.pool import PoolConfig, PoolWorker, Progress, map_on_pool
from training.data.cache import CacheConfig, CacheRunner, cache_slide
from training.data.dataset import TrainSlide

log = logging.getLogger(__name__)


class CacheWorker(PoolWorker):
    """One actor of the pool, caching slides into ``out`` with the given settings."""

    def __init__(self, out: str, cascade: CascadeConfig, config: CacheConfig) -> None:
        logging.basicConfig(level=logging.WARNING)
        self.out, self.cascade, self.config = Path(out), cascade, config

    def cache(self, item: TrainSlide, fold: int) -> None:
        """Cache one slide (raises what :func:`cache_slide` raises)."""
        cache_slide(item, fold, self.out, self.cascade, self.config)


def ray_runner(pool: PoolConfig) -> CacheRunner:
    """A :data:`training.data.cache.CacheRunner` that caches the slides on the Ray pool
    ``pool``."""

    def run(
        todo: list[tuple[TrainSlide, int]], out: Path, cascade: CascadeConfig, config: CacheConfig
    ) -> Iterator[tuple[TrainSlide, BaseException | None]]:
        if not todo:
            return
        progress = Progress(len(todo))
        for (item, _), reply in map_on_pool(
            replace(pool, gpus_per_worker=0.0),  # reading and writing arrays: CPUs only
            CacheWorker,
            (str(out.resolve()), cascade, config),
            todo,
            lambda a, job: a.cache.remote(*job),
        ):
            error = None  # the worker returns None for a cached slide
            if isinstance(reply, BaseException):  # the slide's own error, unwrapped
                error = getattr(reply, "cause", None) or reply
            progress.step(f"{item.filename}: {'cached' if error is None else 'FAILED'}")
            yield item, error

    return run
