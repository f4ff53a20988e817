"""The prefetch thread: same predictions as without it, bounded, and stopping cleanly."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_format

from stages import record, runtime
from stages.budget import BudgetConfig, RunBudget
from stages.cascade import Cascade
from stages.config import load_assets
from stages.decision import Decision
from stages.prefetch import NICENESS, NotReadyError, Prefetcher
from stages.result import SlideResult
from stages.submission import read_table


class Item:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.niceness = 0

    def close(self) -> None:
        self.closed = True


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "prefetch"]


def test_slides_come_in_order_and_a_failed_preparation_raises_at_its_turn() -> None:
    def prepare(name: str) -> Item:
        if name == "bad":
            raise OSError("unreadable")
        return Item(name)

    with Prefetcher(prepare, ["a", "bad", "c"]) as ahead:
        assert ahead.take("a").name == "a"
        with pytest.raises(OSError, match="unreadable"):
            ahead.take("bad")
        assert ahead.take("c").name == "c"
        with pytest.raises(ValueError, match="out of order"):
            ahead.take("d")
    assert not ahead.alive


def test_a_skipped_slide_is_not_prepared_or_is_closed_unused() -> None:
    gate, started, made = threading.Event(), [], {}

    def prepare(name: str) -> Item:
        started.append(name)
        if name == "a":
            gate.wait(10)  # "b" is skipped while "a" is still being prepared
        made[name] = Item(name)
        return made[name]

    with Prefetcher(prepare, ["a", "b", "c", "d"]) as ahead:
        while not started:
            time.sleep(0.01)
        ahead.skip("a")  # being prepared: it will be closed, unused
        ahead.skip("b")  # its turn has not come: never prepared
        gate.set()
        assert ahead.take("c").name == "c"
        with pytest.raises(ValueError, match="out of order"):
            ahead.skip("c")
        assert ahead.take("d").name == "d"
    assert started == ["a", "c", "d"]
    assert made["a"].closed and not made["c"].closed


def test_a_slide_not_ready_in_time_is_passed_over_and_closed_unused() -> None:
    gate, made = threading.Event(), {}

    def prepare(name: str) -> Item:
        if name == "slow":
            gate.wait(10)
        made[name] = Item(name)
        return made[name]

    with Prefetcher(prepare, ["slow", "b"]) as ahead:
        with pytest.raises(NotReadyError, match=r"slow: not prepared within 0\.05 s"):
            ahead.take("slow", timeout_s=0.05)  # raised while its preparation is held
        gate.set()
        assert ahead.take("b", timeout_s=10).name == "b"
    assert made["slow"].closed and not made["b"].closed


class WatchedSemaphore(threading.Semaphore):
    """A semaphore that records, each time an ``acquire`` has to wait, how many times it had
    been released by then and what ``snapshot()`` returns."""

    def __init__(self, value: int = 1) -> None:
        super().__init__(value)
        self.snapshot: Callable[[], list[str]] = list
        self.releases = 0
        self.waits: list[tuple[int, list[str]]] = []

    def release(self, n: int = 1) -> None:
        self.releases += n
        super().release(n)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if super().acquire(blocking=False):
            return True
        self.waits.append((self.releases, self.snapshot()))
        return super().acquire(blocking, timeout)


def test_at_most_depth_slides_are_prepared_ahead_and_close_releases_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[str] = []
    items: list[Item] = []

    def prepare(name: str) -> Item:
        started.append(name)
        items.append(Item(name))
        return items[-1]

    semaphores: list[WatchedSemaphore] = []

    def semaphore(value: int = 1) -> WatchedSemaphore:
        semaphores.append(WatchedSemaphore(value))
        semaphores[-1].snapshot = lambda: list(started)
        return semaphores[-1]

    monkeypatch.setattr("stages.prefetch.threading.Semaphore", semaphore)
    names = [f"s{i}" for i in range(6)]
    ahead = Prefetcher(prepare, names, depth=1)
    (slots,) = semaphores
    taken = ahead.take("s0")  # releases one slot
    # after that release the thread must come to wait for a slot again, holding one slide ahead
    deadline = time.monotonic() + 30  # bounds a hang only
    while not any(releases >= 1 for releases, _ in slots.waits):
        assert time.monotonic() < deadline, slots.waits
        time.sleep(0.01)
    assert [ready for releases, ready in slots.waits if releases >= 1] == [["s0", "s1"]]
    assert started == ["s0", "s1"]  # the slide in hand plus one ahead, no more
    ahead.close()
    assert not ahead.alive and started == ["s0", "s1"]
    assert items[1].closed and not taken.closed  # prepared but never taken: closed by close()


class FakeCascade:
    """Stands in for :class:`Cascade`: each graded slide advances a fake clock by ``cost_s``."""

    def __init__(
        self, clock: list[float], cost_s: float, bad: set[str], slow: set[str] = frozenset()
    ) -> None:
        self.clock, self.cost_s, self.bad, self.slow = clock, cost_s, bad, slow
        self.gate = threading.Event()  # what the slow slides' preparations wait for
        self.prepared: list[Item] = []
        self.inline: list[str] = []  # slides the grading thread prepared itself

    def read_ahead_bytes(self, allotment_s: float, costs: object) -> int:
        return 0

    def tissue_pixels(self, allotment_s: float, costs: object) -> float:
        return math.inf

    def prepare(
        self,
        path: Path,
        mpp: float | None,
        read_ahead_bytes: int = 0,
        max_decoded: float = math.inf,
    ) -> Item:
        if path.name in self.bad:
            raise OSError(f"{path.name}: unreadable")
        if path.name in self.slow:
            self.gate.wait(10)
        self.prepared.append(Item(path.name))
        return self.prepared[-1]

    def grade_slide(self, path, mpp, budget, costs, prepared=None) -> SlideResult:
        if prepared is None:
            self.inline.append(path.name)
            prepared = self.prepare(path, mpp)
        assert prepared.name == path.name
        self.clock[0] += self.cost_s
        prepared.close()
        return SlideResult(path.name, 3, (0.0, 0.0, 0.0, 1.0), "patches")


def grade_all(
    cascade: FakeCascade, names: list[str], time_limit_s: float, **config: float
) -> record.RunReport:
    clock = [0.0]
    cascade.clock = clock
    budget = RunBudget(
        time_limit_s, len(names), BudgetConfig(reserve_s=0.0, **config), clock=lambda: clock[0]
    )
    report = record.RunReport()
    checkpoint = record.Checkpoint(lambda quiet: None, Path("unused"))
    checkpoint.maybe_write = lambda: None  # type: ignore[method-assign]
    mpps: dict[str, float | None] = dict.fromkeys(names)
    ahead = runtime.start_prefetch(cascade, Path("data"), names, mpps, budget)  # type: ignore[arg-type]
    runtime._grade_all(
        runtime.Engine(cascade, budget, ahead, torch.device("cpu")),  # type: ignore[arg-type]
        Path("data"),
        names,
        mpps,
        report,
        prior=Decision((0.25,) * 4, 1, "prior"),
        save_heatmaps=None,
        checkpoint=checkpoint,
    )
    return report


def test_prefetch_stops_at_the_time_limit_and_closes_what_it_read() -> None:
    names = [f"s{i}.tif" for i in range(10)]
    cascade = FakeCascade([0.0], cost_s=10.0, bad=set())
    report = grade_all(cascade, names, time_limit_s=35.0)
    # slides take 10 s of a 35 s run: the 4th starts with 5 s left, then the run is out of time
    assert sorted(report.results) == names[:4]
    assert report.not_started == names[4:]
    assert not prefetch_threads()
    assert len(cascade.prepared) <= 5  # at most one ahead of the last slide started
    assert all(item.closed for item in cascade.prepared)


def test_a_slide_that_fails_in_the_prefetch_costs_only_its_row() -> None:
    names = ["a.tif", "bad.tif", "c.tif"]
    report = grade_all(FakeCascade([0.0], 1.0, bad={"bad.tif"}), names, time_limit_s=100.0)
    assert {n: r.source for n, r in report.results.items()} == {
        "a.tif": "patches",
        "bad.tif": "fallback",
        "c.tif": "patches",
    }
    assert "unreadable" in report.results["bad.tif"].errors[0]
    assert not prefetch_threads()


#: Cost priors of a cheapest path of 0.01 + 4 × 0.01 + 0.01 s, so that fractions of a second
#: a slide pay for it.
CHEAP = {"prior_prepare_s": 0.01, "prior_patch_s": 0.01, "prior_batch_s": 0.01}


def test_a_slide_whose_preparation_overruns_its_plan_gets_the_prior_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the fake clock, 0.6 s for three slides, prefetched (the threshold lowered to 0): the
    slow slide's preparation waits until the grading has given up on it, which it does after the
    slide's plan (a's time unspent rolls over: 0.3 s less the slack, 0.27 s, of real time), with
    the prior's row; the slides around it are graded."""
    monkeypatch.setattr(runtime, "PREFETCH_MIN_S", 0.0)
    names = ["a.tif", "slow.tif", "c.tif"]
    cascade = FakeCascade([0.0], 0.0, bad=set(), slow={"slow.tif"})
    take = Prefetcher.take

    def take_then_release(self: Prefetcher, name: str, timeout_s: float | None = None) -> Item:
        try:
            return take(self, name, timeout_s)
        except NotReadyError:
            cascade.gate.set()  # given up on: the slow preparation may end now
            raise

    monkeypatch.setattr(Prefetcher, "take", take_then_release)
    report = grade_all(cascade, names, time_limit_s=0.6, **CHEAP)
    assert {n: r.source for n, r in report.results.items()} == {
        "a.tif": "patches",
        "slow.tif": "prior",
        "c.tif": "patches",
    }
    assert "slow.tif: not prepared within 0.27 s" in report.results["slow.tif"].errors[0]
    assert cascade.inline == [] and all(item.closed for item in cascade.prepared)


def test_slides_are_prepared_in_turn_below_the_prefetch_threshold() -> None:
    """Allotments under runtime.PREFETCH_MIN_S: the prefetch thread prepares nothing, the
    grading thread prepares each slide itself; above it, the prefetch thread prepares all."""
    names = ["a.tif", "b.tif", "c.tif"]
    assert 0.1 < runtime.PREFETCH_MIN_S < 10.0
    tight = FakeCascade([0.0], 0.0, bad=set())
    grade_all(tight, names, time_limit_s=0.3, **CHEAP)  # 0.1 s a slide
    roomy = FakeCascade([0.0], 0.0, bad=set())
    grade_all(roomy, names, time_limit_s=30.0, **CHEAP)  # 10 s a slide
    assert (tight.inline, roomy.inline) == (names, [])


@pytest.mark.slow
def test_the_same_predictions_with_and_without_prefetch(
    tmp_path: Path, assets: Path, monkeypatch: pytest.MonkeyPatch, generated: Callable[..., Path]
) -> None:
    # the first slide is prepared while the networks warm up (it has no slide to overlap)
    preparing, warmed_while_preparing = threading.Event(), []
    prepare, warm_up = Cascade.prepare, Cascade.warm_up

    def noted_prepare(self: Cascade, *args: object, **kwargs: object) -> object:
        preparing.set()
        return prepare(self, *args, **kwargs)

    def noted_warm_up(self: Cascade) -> float:
        warmed_while_preparing.append(preparing.wait(10.0 if prefetch else 0.0))
        return warm_up(self)

    monkeypatch.setattr(Cascade, "prepare", noted_prepare)
    monkeypatch.setattr(Cascade, "warm_up", noted_warm_up)
    data = shutil.copytree(generated(3, 21), tmp_path / "data")
    (data / "broken.tif").write_bytes(b"II*\x00 not a slide")
    names = [*read_table(data / "submission_format.csv")["filename"], "broken.tif"]
    fmt = read_table(write_format(data, names))
    outputs = {}
    for prefetch in (False, True):
        out = tmp_path / f"prefetch-{prefetch}"
        code = runtime.run(
            data,
            out / "submission.csv",
            assets,
            device="cpu",
            save_heatmaps=out / "maps",
            prefetch=prefetch,
        )
        assert code == 0
        outputs[prefetch] = out
        preparing.clear()
    assert warmed_while_preparing == [False, True]
    assert not prefetch_threads()
    submissions = [read_table(outputs[p] / "submission.csv") for p in (False, True)]
    assert submissions[0].equals(submissions[1])
    for name in fmt["filename"][:3]:
        stem = Path(name).stem
        saved = [SlideResult.load(outputs[p] / "maps" / f"{stem}.npz") for p in (False, True)]
        assert saved[0].probs == saved[1].probs and saved[0].cls == saved[1].cls
        np.testing.assert_array_equal(saved[0].grades, saved[1].grades)
        np.testing.assert_array_equal(saved[0].heatmap.probs, saved[1].heatmap.probs)
        # the prefetched run read its detector windows ahead, whole rows of them at a time, so
        # that it decoded no more than the batch-by-batch reads
        assert saved[1].seconds["prefetched"] > 0 == saved[0].seconds["prefetched"]
        assert 0 < saved[1].decoded_mpx <= saved[0].decoded_mpx
    summary = json.loads((outputs[True] / "maps" / "broken.json").read_text())
    assert summary["source"] == "fallback"


@pytest.mark.slow
def test_read_ahead_windows_give_the_same_heatmap(
    assets: Path, generated: Callable[..., Path]
) -> None:
    path = next(generated(1, 42).glob("*.tif"))
    cascade = Cascade(load_assets(assets, torch.device("cpu")))
    config = replace(cascade.config.budget, min_k=2, max_k=2)
    results = []
    for read_ahead in (0, 5 * 3 * cascade.config.detector.window**2, 10**9):  # none, 5, all
        budget = RunBudget(3600, 1, config)
        prepared = cascade.prepare(path, None, read_ahead)
        expected = 0 if not read_ahead else 5 if read_ahead < 10**9 else None
        if expected is not None:
            assert (0 if prepared.windows is None else len(prepared.windows)) == expected
        results.append(
            cascade.grade_slide(path, None, budget.start_slide(), budget.costs, prepared)
        )
    for other in results[1:]:
        np.testing.assert_array_equal(other.heatmap.probs, results[0].heatmap.probs)
        assert other.probs == results[0].probs


def test_slides_are_prepared_at_a_lower_priority() -> None:
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def prepare(name: str) -> Item:
        item = Item(name)
        item.niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return item

    with Prefetcher(prepare, ["a"]) as ahead:
        assert ahead.take("a").niceness == min(own + NICENESS, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
