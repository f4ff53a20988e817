"""The Ray side of the cluster commands: connecting, sizing a pool of actors, and serving slides
to it one at a time, trying a slide again when its worker process dies.

A pool's actors are created with ``max_restarts=-1``: Ray starts a dead worker process again
(on any node with room) and reruns its constructor. :func:`serve` puts the slide that worker
was on back at the head of the queue, for the next idle actor, up to :data:`RETRIES_ON_CRASH`
times; a slide whose worker dies once more comes back as the Ray error, for the caller to turn
into a fallback. The restarted actor rejoins the pool once it answers again. Only the loss of
a worker counts: an exception raised by the slide's own code comes back at once, as the task's
error. (Ray's own ``max_task_retries`` is not used: it sends the retry to the same actor, which
fails at once while that actor is being restarted after its node was lost.)
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import ray

import stages
import training
from stages.runtime import hms

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Tries of a slide after the first when its worker process dies (restarted each time).
RETRIES_ON_CRASH = 1


@dataclass(frozen=True)
class PoolConfig:
    """Where and how wide the pool runs.

    ``address``: an existing Ray cluster (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); None
    starts a local instance on this machine with ``local_cpus`` CPUs (None: all). ``workers``:
    actors (None: as many as the cluster's GPUs, or CPUs, allow); ``cpus_per_worker`` /
    ``gpus_per_worker``: each actor's Ray resources (None: one GPU per actor when the cluster
    has GPUs, with the CPUs shared out between them; else one CPU and no GPU).
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    local_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.gpus_per_worker is not None and not self.gpus_per_worker >= 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")


def connect(config: PoolConfig) -> None:
    """Join the cluster at ``config.address``, or start a local Ray instance (without the
    dashboard). A process already connected stays so. On a remote cluster the code of
    ``stages`` and ``training`` travels with the job (Ray's ``py_modules``); the workers need
    only the same packages installed."""
    if ray.is_initialized():
        return
    if config.address is None:
        ray.init(
            num_cpus=config.local_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    else:
        ray.init(
            address=config.address,
            runtime_env={"py_modules": [stages, training]},
            logging_level=logging.WARNING,
        )
    log.info("ray: %s", {k: v for k, v in ray.cluster_resources().items() if "node" not in k})


@dataclass(frozen=True)
class Sizing:
    """The pool's width and each actor's Ray resources."""

    workers: int
    cpus: float
    gpus: float


def size_pool(config: PoolConfig, resources: dict[str, float]) -> Sizing:
    """The pool :class:`PoolConfig` asks for on a cluster with ``resources``
    (``ray.cluster_resources()``: ``CPU``, ``GPU`` counts)."""
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    gpw = config.gpus_per_worker
    if gpw is None:
        gpw = 1.0 if gpus >= 1 else 0.0
    if config.cpus_per_worker is not None:
        cpw = config.cpus_per_worker
    elif gpw > 0:
        cpw = max(1.0, math.floor(cpus / max(gpus / gpw, 1.0)))
    else:
        cpw = 1.0
    workers = config.workers
    if workers is None:
        workers = math.floor(gpus / gpw) if gpw > 0 else math.floor(cpus / cpw)
    return Sizing(max(int(workers), 1), cpw, gpw)


class PoolWorker:
    """What :func:`serve` needs of an actor class besides its work: :meth:`ready`."""

    def ready(self) -> bool:
        """True once the actor (restarted or not) is up."""
        return True


def start_actors(cls: type[PoolWorker], sizing: Sizing, *args: Any) -> list[Any]:
    """``sizing.workers`` Ray actors of ``cls(*args)`` that are restarted when their process
    dies (see the module doc)."""
    remote = ray.remote(cls).options(num_cpus=sizing.cpus, num_gpus=sizing.gpus, max_restarts=-1)
    log.info(
        "%d %s workers, %g CPU and %g GPU each", sizing.workers, cls.__name__, sizing.cpus,
        sizing.gpus,
    )  # fmt: skip
    return [remote.remote(*args) for _ in range(sizing.workers)]


def serve(
    actors: list[Any], items: Iterable[T], call: Callable[[Any, T], ray.ObjectRef]
) -> Iterator[tuple[T, Any]]:
    """Each item to an idle actor (``call(actor, item)`` submits it), one in flight per actor;
    yields ``(item, result)`` as they finish, the result being the Ray error
    (:class:`ray.exceptions.RayError`) where the item failed: raised by the item's own code
    (:class:`ray.exceptions.RayTaskError`), or its worker lost on every try (see the module
    doc). An actor is killed as soon as no item is left for it, freeing its resources."""
    queue = deque(enumerate(items))
    idle = list(actors)
    lost: Counter[int] = Counter()
    working: dict[ray.ObjectRef, tuple[int, T, Any]] = {}
    restarting: dict[ray.ObjectRef, Any] = {}
    while queue or working:
        while idle and queue:
            actor = idle.pop()
            index, item = queue.popleft()
            working[call(actor, item)] = (index, item, actor)
        if not working and not restarting:
            raise RuntimeError(f"no worker left for {len(queue)} items")
        (ref,), _ = ray.wait([*working, *restarting], num_returns=1)
        if ref in restarting:
            actor = restarting.pop(ref)
            try:
                ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayError as exc:
                log.warning("a worker cannot be restarted, going on without it: %s", exc)
            continue
        index, item, actor = working.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            result = exc
        except ray.exceptions.RayError as exc:  # the worker process (or its node) is gone
            lost[index] += 1
            restarting[actor.ready.options(max_task_retries=-1).remote()] = actor
            if lost[index] <= RETRIES_ON_CRASH:
                log.warning(
                    "%s: its worker was lost (%s); trying it again", item, type(exc).__name__
                )
                queue.appendleft((index, item))
                continue
            yield item, exc
            continue
        if queue:
            idle.append(actor)
        else:
            ray.kill(actor)
        yield item, result


def map_on_pool(
    config: PoolConfig,
    cls: type[PoolWorker],
    args: tuple,
    items: list[T],
    call: Callable[[Any, T], ray.ObjectRef],
) -> Iterator[tuple[T, Any]]:
    """:func:`serve` ``items`` on a pool of ``cls(*args)`` actors sized by ``config`` (never
    wider than the items), connecting first; every actor is killed when the items are done or
    the caller stops."""
    connect(config)
    sizing = size_pool(config, ray.cluster_resources())
    actors = start_actors(cls, replace(sizing, workers=min(sizing.workers, len(items))), *args)
    try:
        yield from serve(actors, items, call)
    finally:
        for actor in actors:
            ray.kill(actor)


class Progress:
    """Log lines ``[done/total] …; N slides/h, ETA H:MM:SS`` over one run (``clock``
    injectable)."""

    def __init__(
        self, total: int, clock: Callable[[], float] = time.monotonic, unit: str = "slides"
    ) -> None:
        self.total, self.done, self._clock, self.unit = total, 0, clock, unit
        self.started = clock()

    def rate(self) -> float:
        """Items finished per hour so far (0 before the first)."""
        elapsed = self._clock() - self.started
        return 3600.0 * self.done / elapsed if elapsed > 0 else 0.0

    def step(self, message: str, level: int = logging.INFO) -> None:
        """Count one item finished and log ``message`` with the rate and the ETA."""
        self.done += 1
        rate = self.rate()
        eta = (self.total - self.done) / rate * 3600.0 if rate > 0 else math.inf
        log.log(
            level,
            "[%d/%d] %s; %.0f %s/h, ETA %s",
            self.done,
            self.total,
            message,
            rate,
            self.unit,
            hms(eta) if math.isfinite(eta) else "?",
        )
