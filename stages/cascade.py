"""One slide through the cascade: tissue → heatmap → hotspots → graded patches → least-cost class.

:meth:`Cascade.grade_slide` returns a :class:`stages.result.SlideResult` that ``main.py`` (through
:mod:`stages.runtime`) and the inspection notebooks both use. A stage that fails does not lose
the slide: the error is recorded and the decision is made from what the earlier stages gave
(heatmap without patches, or the prior without either).

::

    page ~16 µm/px          page ~4 µm/px                       page ~0.5 µm/px
    ┌──────────┐  tissue   ┌──────────────┐  top-k peaks   ┌──────────────────┐
    │  tissue  │──windows─▶│ detector net │──────────────▶│ patch classifier │─┐
    │   mask   │           │ heatmap CxHxW│  (NMS, budget) │   (N, 4) grades  │ │
    └──────────┘           └──────┬───────┘                └──────────────────┘ │
                                  └── heatmap probs at hotspots ──▶ decision ◀──┘
                                       (cost-aware: argmin expected competition cost)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from stages.budget import CostModel, SlideBudget
from stages.classifier import grade, memory_batch, read_patches
from stages.config import Assets, CascadeConfig
from stages.decision import Decision, decide_slide
from stages.detector import Heatmap, heatmap_grid, predict_heatmap, read_windows, tissue_windows
from stages.hotspots import Hotspot, heat_evidence, select_hotspots, tissue_hotspots
from stages.nets import inference, to_input
from stages.prefetch import NotReadyError
from stages.result import SlideResult, fallback_result
from stages.slide import ReadStats, Slide, SlideError
from stages.tissue import mask_for_slide

log = logging.getLogger(__name__)


def grade_or_fallback(
    cascade: Cascade,
    path: Path,
    mpp: float | None,
    budget: SlideBudget,
    costs: CostModel,
    prior: Decision,
    prepared: Callable[[], Prepared | None] = lambda: None,
) -> SlideResult:
    """:meth:`Cascade.grade_slide`, or the ``prior``'s :func:`fallback_result` (with the error)
    when the slide cannot be graded at all: one bad slide costs only its own row. ``prepared``
    gives what :meth:`Cascade.prepare` made of the slide ahead of time (a failure to prepare it
    counts as the slide's; one not ready within the slide's time, :class:`NotReadyError`, gets
    the ``prior``'s row, source "prior", as the budget's cut). Adds ``slide`` (the wall time
    spent here) and ``allotment`` (the budget's seconds) to the result's ``seconds``."""
    start = time.monotonic()
    try:
        result = cascade.grade_slide(path, mpp, budget, costs, prepared())
    except NotReadyError as exc:
        log.warning("%s: the prior's class: %s", path.name, exc)
        result = SlideResult(path.name, prior.cls, prior.probs, "prior", errors=[f"budget: {exc}"])
    except Exception as exc:
        result = fallback_result(path.name, prior, f"{type(exc).__name__}: {exc}")
    result.seconds |= {"slide": time.monotonic() - start, "allotment": budget.allotment}
    return result


#: Detector windows a :class:`Prepared` slide may hold read ahead (RGB bytes).
READ_AHEAD_BYTES = 256 * 1024 * 1024


@dataclass
class Prepared:
    """A slide opened ahead of grading (by :meth:`Cascade.prepare`, possibly in another thread).

    ``mask``: tissue ``(h, w)`` bool of pyramid page ``mask_page``; ``detector_page``: the page
    nearest the detector's ``target_mpp``; ``corners``: its tissue windows' top-left corners
    (:func:`stages.detector.tissue_windows`, listed once per slide, here); ``windows``:
    ``(N, window, window, 3)`` uint8 pixels of the first N of them, read ahead (None: none were);
    ``seconds``: the preparation's work by stage (``tissue``, and ``decode`` for its reads);
    ``mask_reads``: what the mask's reads decoded (pixels) and took (seconds).
    """

    slide: Slide
    mask: np.ndarray
    mask_page: int
    detector_page: int
    corners: list[tuple[int, int]]
    windows: np.ndarray | None
    seconds: dict[str, float] = field(default_factory=dict)
    mask_reads: ReadStats = field(default_factory=ReadStats)

    def close(self) -> None:
        """Release the slide's pyvips handles."""
        self.slide.close()


class StageClock:
    """Seconds per stage of one slide, each stage's own work with the slide's pixel reads (its
    :class:`stages.slide.ReadStats`) taken out and counted once, as ``decode``."""

    def __init__(
        self,
        slide: Slide,
        seconds: dict[str, float] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.slide = slide
        self.seconds = dict(seconds or {})
        self._clock = clock

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the time spent in the ``with`` block, minus its reads, to stage ``name``."""
        start, read = self._clock(), self.slide.reads.seconds
        try:
            yield
        finally:
            spent = self._clock() - start - (self.slide.reads.seconds - read)
            self.seconds[name] = self.seconds.get(name, 0.0) + spent

    def finish(self) -> dict[str, float]:
        """The stages' seconds with ``decode``: all reads of the slide."""
        return self.seconds | {"decode": self.slide.reads.seconds}


def detect(
    slide: Slide,
    prepared: Prepared,
    model: torch.nn.Module,
    config: CascadeConfig,
    device: torch.device,
    budget: SlideBudget,
    costs: CostModel,
    autocast: torch.dtype | None = None,
) -> Heatmap | None:
    """Stage 1 on ``slide``: the detector over the tissue windows of the page the budget affords
    (the page nearest ``detector.target_mpp``, or coarser), stopped before a batch whose
    estimated cost does not fit the slide's :meth:`~SlideBudget.plan_left` less the time kept for
    what follows (the hotspots of its heatmap, :func:`heatmap_cells`, and ``min_k`` patches at
    their decaying peak cost: a batch cannot be stopped part way); records its measured cost in
    ``costs``. Costs count whole batches of windows: the frozen network runs every batch at one
    shape (:func:`stages.nets.padded_forward`), so a part batch costs a full one (elsewhere a
    part batch costs less: the estimates err on the safe side). None when not even the coarsest
    page's pass fits that time (the cheaper path: :func:`stages.hotspots.tissue_hotspots`). The
    windows listed and read ahead in ``prepared`` are used when its detector page is chosen;
    ``autocast``: the network's dtype (None: float32)."""
    cfg = config.detector
    base = prepared.detector_page
    batch_px = cfg.batch_size * cfg.window**2
    pixels = math.ceil(len(prepared.corners) / cfg.batch_size) * batch_px
    keep = costs.patch_seconds(config.budget.kept_patches, peak=True)
    keep += costs.hotspot_seconds(heatmap_cells(slide, base, cfg.stride))
    batch_s = costs.detector_seconds(batch_px)
    page = budget.choose_detector_page(
        base, len(slide.pages), costs.detector_seconds(pixels), keep, least_s=batch_s
    )
    if page is None:
        return None
    mask_scale = slide.pages[prepared.mask_page].scale
    start = time.perf_counter()
    heatmap = predict_heatmap(
        model,
        slide,
        page,
        prepared.mask,
        mask_scale,
        cfg,
        device,
        should_stop=lambda _: budget.plan_left() < keep + costs.detector_seconds(batch_px),
        prefetched=prepared.windows if page == base else None,
        autocast=autocast,
        corners=prepared.corners if page == base else None,
    )
    if heatmap.windows:  # measured in the unit estimated above: pixels of the batches run
        batches = math.ceil(heatmap.windows / cfg.batch_size)
        costs.observe_detector(batches * batch_px, time.perf_counter() - start)
    return heatmap


def heatmap_cells(slide: Slide, page: int, stride: int) -> int:
    """Cells of the heatmap the detector makes on ``page`` with cells of ``stride`` page px
    (:func:`stages.detector.heatmap_grid`)."""
    width, height = heatmap_grid(slide.pages[page].size, stride)
    return width * height


def locate_hotspots(
    slide: Slide, heatmap: Heatmap, config: CascadeConfig, classifier_page: int
) -> list[Hotspot]:
    """The top ``budget.max_k`` hotspots of ``heatmap`` (tissue cells the detector saw), as
    page-0 boxes of one classifier patch on ``classifier_page``, best first."""
    sx, sy = slide.pages[classifier_page].scale
    patch = (config.classifier.patch * sx, config.classifier.patch * sy)
    return select_hotspots(
        heatmap.probs,
        heatmap.tissue & heatmap.visited,
        heatmap.scale,
        slide.mpp,
        patch,
        config.hotspots,
        k=config.budget.max_k,
    )


class Cascade:
    """The loaded networks and config, grading one slide at a time."""

    def __init__(self, assets: Assets) -> None:
        self.config = assets.config
        self.use(assets)

    def use(self, assets: Assets) -> None:
        """Grade with ``assets`` (same config) from now on: the CPU's after a GPU fault. Sets
        :attr:`patch_batch`, the patches per classifier batch: the budget's batch size, or fewer
        where the device's memory is short (:func:`stages.memory.memory_batch`). On a GPU, a
        failing memory probe raises (the GPU is at fault); on the CPU it is logged."""
        self.assets = assets
        budget = self.config.budget
        self.patch_batch = budget.batch_size
        if budget.stage2:
            try:
                self.patch_batch = memory_batch(
                    assets.classifier,
                    self.config.classifier,
                    assets.device,
                    assets.autocast,
                    budget.batch_size,
                )
            except Exception as exc:  # on the CPU, a classifier that fails fails per slide
                if assets.device.type == "cuda":
                    raise
                log.warning(
                    "classifier memory probe failed (%s); batches of %d", exc, budget.batch_size
                )

    def warm_up(self) -> float:
        """Run each network once on a blank full batch, so that the first slide does not pay for
        the kernels' first-call set-up; returns the seconds it took. Raises what the networks
        raise: networks that cannot run a blank batch cannot grade a slide (the runtime falls
        back to the CPU or stops, :func:`stages.runtime.run`)."""
        start = time.perf_counter()
        det, cls = self.config.detector, self.config.classifier
        device, autocast = self.assets.device, self.assets.autocast
        blank = np.full((det.batch_size, det.window, det.window, 3), 255, np.uint8)
        with inference(device, autocast):
            self.assets.detector(to_input(blank, device, det.mean, det.std))
        if self.config.budget.stage2:
            patches = np.full((self.patch_batch, cls.patch, cls.patch, 3), 255, np.uint8)
            grade(self.assets.classifier, patches, cls, device, autocast)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # a kernel's fault shows here, not in the first slide
        seconds = time.perf_counter() - start
        log.info("networks warmed up in %.2f s", seconds)
        return seconds

    def read_ahead_bytes(self, allotment_s: float, costs: CostModel) -> int:
        """Bytes of detector windows worth reading ahead for a slide given ``allotment_s``: as
        many windows as the detector's share of it (``budget.detector_fraction``) pays for at
        the measured cost, at most :data:`READ_AHEAD_BYTES`. With less time per slide the
        detector runs on a coarser page or not at all, and windows read ahead would be wasted."""
        cfg = self.config
        window_px = cfg.detector.window**2
        seconds = cfg.budget.detector_fraction * max(allotment_s, 0.0)
        per_window = costs.detector_seconds(window_px)
        windows = math.floor(seconds / per_window) if per_window > 0 else math.inf
        return int(min(READ_AHEAD_BYTES, windows * 3 * window_px))

    def tissue_pixels(self, allotment_s: float, costs: CostModel) -> float:
        """Pixels the tissue mask of a slide given ``allotment_s`` may decode: as many as its
        share of it (``budget.tissue_fraction``) pays for at the measured cost (a limit that only
        a slide without an overview page can reach: :func:`stages.tissue.mask_for_slide`)."""
        return costs.decodable_pixels(self.config.budget.tissue_fraction * allotment_s)

    def prepare(
        self,
        path: Path,
        mpp: float | None,
        read_ahead_bytes: int = 0,
        max_decoded: float = math.inf,
    ) -> Prepared:
        """Open the slide at ``path`` and find its tissue; with ``read_ahead_bytes`` > 0, also
        read the first tissue windows of the detector page that fit in that many bytes.

        A slide whose coarsest page is above ``tissue.max_page_pixels`` gets the pyramid levels
        it lacks (:class:`stages.slide.Slide`), its mask decoding at most ``max_decoded`` pixels
        (:meth:`tissue_pixels`; a coarser approximation beyond: :func:`mask_for_slide`).
        Raises :class:`stages.slide.SlideError` when the slide cannot be opened or its tissue
        page cannot be read; a failed read-ahead is logged and left to the detector stage.
        """
        slide = Slide(
            path,
            mpp=mpp,
            default_mpp=self.config.default_mpp,
            max_page_pixels=self.config.tissue.max_page_pixels,
        )
        try:
            clock = StageClock(slide)
            with clock.stage("tissue"):
                mask, mask_page = mask_for_slide(slide, self.config.tissue, max_decoded)
            mask_reads = replace(slide.reads)
            cfg = self.config.detector
            page = slide.page_for_mpp(cfg.target_mpp)
            info = slide.pages[page]
            corners = tissue_windows(
                info.size, info.scale, mask, slide.pages[mask_page].scale, cfg.window, cfg.overlap
            ) if mask.any() else []  # fmt: skip
            windows = None
            n = read_ahead_bytes // (3 * cfg.window**2)
            if n > 0 and corners:
                try:
                    windows = read_windows(slide, page, corners[:n], cfg.window)
                except SlideError as exc:
                    log.warning("%s: reading ahead failed: %s", path.name, exc)
        except BaseException:
            slide.close()
            raise
        return Prepared(slide, mask, mask_page, page, corners, windows, clock.seconds, mask_reads)

    def grade_slide(
        self,
        path: Path,
        mpp: float | None,
        budget: SlideBudget,
        costs: CostModel,
        prepared: Prepared | None = None,
    ) -> SlideResult:
        """Grade the slide at ``path`` within ``budget``; ``mpp`` from the metadata, if any;
        ``prepared``: what :meth:`prepare` made of it ahead of time (else it is prepared here).

        Raises :class:`stages.slide.SlideError` only when the slide cannot be opened or its
        tissue page cannot be read; later stages' failures are recorded in ``errors``.
        ``seconds`` of the result holds each stage's work (``tissue``, ``detector``, ``hotspots``,
        ``classifier``, ``decision``; reads counted once, as ``decode``), ``prefetched`` (the
        part of it done ahead) and ``total``, the wall time spent here. The runtime adds
        ``slide`` (the wall time its budget saw, waiting for the prefetch included) and
        ``allotment`` (the seconds the budget gave the slide). The tissue mask's reads are
        measured into ``costs.decode``.
        """
        t0 = time.perf_counter()
        ahead = 0.0
        if prepared is None:
            prepared = self.prepare(
                path, mpp, max_decoded=self.tissue_pixels(budget.plan_left(), costs)
            )
            costs.observe_prepare(time.perf_counter() - t0)
        else:
            ahead = prepared.seconds.get("tissue", 0.0) + prepared.slide.reads.seconds
            costs.observe_prepare(ahead)
        try:
            result = self._grade(prepared, budget, costs)
        finally:
            prepared.close()
        if prepared.mask_reads.pixels:  # whole pages: the rate a slide without an overview pays
            costs.observe_decode(prepared.mask_reads.pixels, prepared.mask_reads.seconds)
        result.seconds |= {"prefetched": ahead, "total": time.perf_counter() - t0}
        return result

    def _grade(self, prepared: Prepared, budget: SlideBudget, costs: CostModel) -> SlideResult:
        cfg = self.config
        slide, mask = prepared.slide, prepared.mask
        mask_scale = slide.pages[prepared.mask_page].scale
        clock = StageClock(slide, prepared.seconds)
        errors: list[str] = []
        pages = {"tissue": prepared.mask_page, "detector_base": prepared.detector_page}
        classifier_page = slide.page_for_mpp(cfg.classifier.target_mpp)
        heatmap = None
        hotspots: list[Hotspot] = []
        if mask.any():
            try:
                with clock.stage("detector"):
                    heatmap = detect(
                        slide, prepared, self.assets.detector, cfg, self.assets.device, budget,
                        costs, self.assets.autocast,
                    )  # fmt: skip
                with clock.stage("hotspots"):
                    if heatmap is None:  # the budget affords no detector pass
                        hotspots = self._tissue_hotspots(slide, mask, mask_scale, classifier_page)
                    else:
                        pages["detector"] = heatmap.page
                        hotspots = locate_hotspots(slide, heatmap, cfg, classifier_page)
                if heatmap is not None:
                    costs.observe_hotspots(heatmap.visited.size, clock.seconds["hotspots"])
            except Exception as exc:  # a stage failure costs the stage, not the slide
                errors.append(_describe("detector", exc))
                log.exception("%s: detector failed", slide.path.name)

        grades = np.zeros((0, cfg.classifier.classes), np.float32)
        if hotspots and cfg.budget.stage2:
            pages["classifier"] = classifier_page
            try:
                with clock.stage("classifier"):
                    grades = self._grade_hotspots(slide, hotspots, classifier_page, budget, costs)
            except Exception as exc:
                errors.append(_describe("classifier", exc))
                log.exception("%s: classifier failed", slide.path.name)

        with clock.stage("decision"):
            decision = decide_slide(grades, heat_evidence(hotspots), cfg.decision)
        return SlideResult(
            filename=slide.path.name,
            cls=decision.cls,
            probs=decision.probs,
            source=decision.source,
            hotspots=hotspots,
            grades=grades,
            heatmap=heatmap,
            tissue=mask,
            tissue_scale=mask_scale,
            seconds=clock.finish(),
            decoded_mpx=slide.reads.pixels / 1e6,
            size=(slide.width, slide.height),
            pages=pages,
            errors=errors,
        )

    def _tissue_hotspots(
        self, slide: Slide, mask: np.ndarray, mask_scale: tuple[float, float], page: int
    ) -> list[Hotspot]:
        """The cheaper path's hotspots: from the tissue alone, as many as the budget's
        ``min_k`` (the classifier grades what the slide's time allows of them)."""
        cfg = self.config
        sx, sy = slide.pages[page].scale
        patch = (cfg.classifier.patch * sx, cfg.classifier.patch * sy)
        k = max(cfg.budget.min_k, 1)
        return tissue_hotspots(mask, mask_scale, slide.mpp, patch, cfg.hotspots.nms_um, k)

    def _grade_hotspots(
        self,
        slide: Slide,
        hotspots: list[Hotspot],
        page: int,
        budget: SlideBudget,
        costs: CostModel,
    ) -> np.ndarray:
        """Grade hotspots in order, batch by batch, while the budget grants them (planned at the
        reads' and the batches' decaying peak costs, :class:`stages.budget.Ema`: one slow read
        would otherwise overrun a tight slide; a batch of fewer patches runs padded, at the cost
        of a full one)."""
        graded: list[np.ndarray] = []
        done = 0
        while done < len(hotspots):
            granted = budget.expand_next(done, costs.patch.peak, costs.batch.peak)
            n = min(granted, len(hotspots) - done, self.patch_batch)
            if n <= 0:
                break
            start = time.perf_counter()
            centers = [h.box.center for h in hotspots[done : done + n]]
            # a slow read (a cold disk) stops the reading once the batch's run no longer fits
            patches = read_patches(
                slide,
                centers,
                page,
                self.config.classifier.patch,
                should_stop=lambda _: budget.plan_left() < costs.batch.peak,
            )
            n = len(patches)
            read = time.perf_counter()
            graded.append(
                grade(
                    self.assets.classifier,
                    patches,
                    self.config.classifier,
                    self.assets.device,
                    self.assets.autocast,
                    pad_to=self.patch_batch,
                )
            )
            costs.observe_patches(n, read - start, time.perf_counter() - read)
            done += n
        if not graded:
            return np.zeros((0, self.config.classifier.classes), np.float32)
        return np.concatenate(graded)


def _describe(stage: str, exc: BaseException) -> str:
    return f"{stage}: {type(exc).__name__}: {exc}"
