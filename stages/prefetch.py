"""Read the next slide while the networks work on this one: a bounded prefetch thread.

:class:`Prefetcher` runs a ``prepare`` function (:meth:`stages.cascade.Cascade.prepare`: open
the slide, find its tissue, decode its first detector windows) over the slides in order, in one
background thread, at most ``depth`` slides ahead of the one being graded, at a lower scheduling
priority (:data:`NICENESS`). libvips, OpenCV and torch release the GIL while they work, so
decoding overlaps the networks' arithmetic.

* :meth:`Prefetcher.take` hands over the slides in the same order; a slide whose preparation
  raised re-raises that exception there, so it costs its own row and nothing else. With a
  timeout, a slide not ready in time raises :class:`NotReadyError` and is passed over (closed
  unused when its preparation ends). ``prepare`` may return None: nothing prepared, the
  consumer prepares the slide itself.
  :meth:`Prefetcher.skip` passes over the next slide instead: it is not prepared if its turn has
  not come, and closed unused if it has.
* :meth:`Prefetcher.close` (or leaving the ``with`` block) stops the thread before it starts
  another slide and closes every slide prepared but never taken; it waits at most ``timeout_s``
  for a preparation in progress (a stuck native read cannot hold the run).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)


class Closable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


class NotReadyError(TimeoutError):
    """A slide's preparation did not end within the time :meth:`Prefetcher.take` could wait."""


class Prefetcher(Generic[T]):
    """Prepares ``names`` in order with ``prepare(name)`` in a daemon thread, ``depth`` ahead."""

    def __init__(
        self, prepare: Callable[[str], T | None], names: Sequence[str], depth: int = 1
    ) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._prepare = prepare
        self._names = list(names)
        self._ready: queue.Queue[tuple[str, T | None, BaseException | None]] = queue.Queue()
        self._slots = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._next = 0  # index of the next name take() or skip() hands over
        self._skipped: set[str] = set()
        self._thread = threading.Thread(target=self._run, daemon=True, name="prefetch")
        self._thread.start()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        _lower_priority()
        for name in self._names:
            self._slots.acquire()  # released when the consumer takes a slide, or on close
            if self._stop.is_set():
                return
            if name in self._skipped:  # passed over before its turn: never prepared
                self._slots.release()
                continue
            try:
                item: tuple[str, T | None, BaseException | None] = (name, self._prepare(name), None)
            except BaseException as exc:  # handed to the consumer with its slide
                item = (name, None, exc)
            if self._stop.is_set():
                _close_quietly(item[1])
                return
            if name in self._skipped:  # passed over while being prepared: on to the next one
                _close_quietly(item[1])
                self._slots.release()
                continue
            self._ready.put(item)

    def _advance(self, name: str, verb: str) -> None:
        if self._next >= len(self._names) or self._names[self._next] != name:
            expected = self._names[self._next] if self._next < len(self._names) else None
            raise ValueError(f"{verb}({name!r}) out of order: the next slide is {expected!r}")
        self._next += 1

    def skip(self, name: str) -> None:
        """Pass over ``name`` (the next in order) without waiting: it is not prepared if the
        thread has not started it, and closed unused when its preparation ends."""
        self._advance(name, "skip")
        self._skipped.add(name)

    def take(self, name: str, timeout_s: float | None = None) -> T | None:
        """The prepared slide ``name`` (the next in order), waiting for it at most ``timeout_s``
        (None: as long as it takes); None when ``prepare`` prepared nothing. Raises what its
        preparation raised, or :class:`NotReadyError` after ``timeout_s`` (the slide is then
        passed over, as by :meth:`skip`)."""
        self._advance(name, "take")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                got, prepared, error = self._ready.get(timeout=wait)
            except queue.Empty:
                self._skipped.add(name)
                raise NotReadyError(f"{name}: not prepared within {timeout_s:.2f} s") from None
            self._slots.release()
            if got not in self._skipped:
                break
            _close_quietly(prepared)  # prepared before it was skipped
        assert got == name, (got, name)  # one producer, in order
        if error is not None:
            raise error
        return prepared

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop preparing; close what was prepared and not taken. Idempotent."""
        self._stop.set()
        self._slots.release()  # wake the thread if it waits for a slot
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("prefetch: a slide still being read after %.0f s is left behind", timeout_s)
        while True:
            try:
                _, prepared, _ = self._ready.get_nowait()
            except queue.Empty:
                break
            _close_quietly(prepared)

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()


#: Niceness the prefetch thread adds to its own: on a machine whose cores the networks' threads
#: fill, the read-ahead takes the time they leave instead of slowing them down.
NICENESS = 10


def _lower_priority() -> None:
    """Lower this thread's scheduling priority by :data:`NICENESS` (Linux: a thread's id is a
    process id for ``setpriority``); elsewhere, or when refused, it keeps its priority."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICENESS)
    except (AttributeError, OSError) as exc:
        log.debug("prefetch: priority unchanged (%s)", exc)


def _close_quietly(prepared: Closable | None) -> None:
    if prepared is None:
        return
    try:
        prepared.close()
    except Exception:
        log.exception("prefetch: closing a prepared slide failed")
