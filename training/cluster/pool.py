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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import ray

import stages
import training
from stages.record import hms

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Tries of a slide after the first when its worker process dies (restarted each time).
RETRIES_ON_CRASH = 1
#: Decimals of a share of a GPU (Ray's resolution); shares are rounded down, so that they fit.
GPU_SHARE_DECIMALS = 4


@dataclass(frozen=True)
class PoolConfig:
    """Where and how wide the pool runs.

    ``address``: an existing Ray cluster (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); None
    starts a local instance on this machine with ``local_cpus`` CPUs (None: all). ``workers``:
    actors (None: as many as the nodes' GPUs, or CPUs, hold); ``cpus_per_worker`` /
    ``gpus_per_worker``: each actor's Ray resources (None: see :func:`size_pool`).
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


class PlacementError(RuntimeError):
    """No node of the cluster can hold one actor of the pool: it would wait for ever."""


def gpu_share(actors: int) -> float:
    """The share of a GPU each of ``actors`` actors gets to share one: ``1 / actors`` rounded
    down to :data:`GPU_SHARE_DECIMALS` decimals."""
    scale = 10**GPU_SHARE_DECIMALS
    return math.floor(scale / actors) / scale


def size_pool(config: PoolConfig, nodes: Sequence[Mapping[str, float]]) -> Sizing:
    """The pool :class:`PoolConfig` asks for on a cluster of ``nodes`` (each alive node's
    resources, ``ray.nodes()``' ``Resources``: ``CPU`` and ``GPU`` counts), sized per node, as
    Ray places each actor on one node.

    Unless given: on a cluster with GPUs each actor gets one, or, where ``workers`` outnumber
    the GPUs, an equal share of one (:func:`gpu_share`), and the CPUs of the GPU nodes shared
    out between the actors each holds (the fewest any of them gives, at least one); without
    GPUs, one CPU and none. ``workers`` None: as many as the nodes hold. Raises
    :class:`PlacementError` when no node can hold one actor."""
    gpus = sum(math.floor(node.get("GPU", 0.0)) for node in nodes)
    gpw = config.gpus_per_worker
    if gpw is None:
        if not gpus:
            gpw = 0.0
        elif config.workers is None or config.workers <= gpus:
            gpw = 1.0
        else:
            gpw = gpu_share(math.ceil(config.workers / gpus))
    # actors each node holds by its GPUs (all of them when the actors need none)
    by_gpu = [math.floor(n.get("GPU", 0.0) / gpw + 1e-9) if gpw else math.inf for n in nodes]
    cpw = config.cpus_per_worker
    if cpw is None:
        cpw = 1.0
        shares = [n.get("CPU", 0.0) / k for n, k in zip(nodes, by_gpu, strict=True) if k > 0]
        if gpw and shares:  # each GPU node's CPUs per actor it holds
            cpw = max(1.0, math.floor(min(shares)))
    held = sum(
        min(math.floor(n.get("CPU", 0.0) / cpw + 1e-9), k)
        for n, k in zip(nodes, by_gpu, strict=True)
    )
    if held < 1:
        raise PlacementError(
            f"no node can hold an actor of {cpw:g} CPU and {gpw:g} GPU (nodes: "
            f"{[{k: v for k, v in n.items() if k in ('CPU', 'GPU')} for n in nodes]}); "
            "ask for fewer CPUs or GPUs per worker"
        )
    workers = config.workers or held
    if workers > held:
        log.warning(
            "%d workers asked for, the nodes hold %d at once: the others wait for room",
            workers, held,
        )  # fmt: skip
    return Sizing(workers, cpw, gpw)


def alive_nodes() -> list[dict[str, float]]:
    """The resources of each alive node of the connected cluster."""
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


class PoolWorker:
    """What :func:`serve` needs of an actor class besides its work: :meth:`ready`."""

    def ready(self) -> bool:
        """True once the actor (restarted or not) is up."""
        return True


def actor_options(sizing: Sizing) -> dict[str, Any]:
    """Ray's options of each actor of a pool sized ``sizing``: its resources, and restarts
    when its process dies (see the module doc). An actor given no GPU is also kept from seeing
    one (``CUDA_VISIBLE_DEVICES=""``): Ray leaves that variable as it is for such an actor, so
    it would take the GPU that the actors given one share."""
    options: dict[str, Any] = {
        "num_cpus": sizing.cpus,
        "num_gpus": sizing.gpus,
        "max_restarts": -1,
    }
    if not sizing.gpus:
        options["runtime_env"] = {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}}
    return options


def start_actors(cls: type[PoolWorker], sizing: Sizing, *args: Any) -> list[Any]:
    """``sizing.workers`` Ray actors of ``cls(*args)`` with :func:`actor_options`."""
    remote = ray.remote(cls).options(**actor_options(sizing))
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
    sizing = size_pool(config, alive_nodes())
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
