"""One global time limit shared over the slides of a run, on an injectable clock.

* :class:`RunBudget` starts when created. Time before its hard end minus ``reserve_s`` (kept for
  writing the submission) is shared out as it goes: each slide gets ``allotment = (remaining −
  reserve) / slides left`` when it starts, so time a slide leaves unused rolls over to the later
  ones (and an overrun is taken from them). When less than ``min_slide_s`` is left before the
  reserve, and less than a slide's cheapest path costs, the run is :meth:`~RunBudget.exhausted` and
  the remaining slides get fallback rows. When the time left per slide is below what a slide's
  cheapest path costs (:meth:`CostModel.slide_floor`), :meth:`~RunBudget.skip_next` gives some
  slides the prior row unread, spread evenly, so that the slides graded get at least that much.
* :class:`SlideBudget` is one slide's share: a deadline, how many hotspots the next batch may
  grade (:meth:`~SlideBudget.expand_next`) and which detector page is affordable, if any
  (:meth:`~SlideBudget.choose_detector_page`; none: the slide's hotspots come from its tissue
  alone). No unit of work is started unless its estimated cost fits the slide's time left.
* :class:`CostModel` holds measured costs (seconds per patch read, per classifier batch run,
  per detector megapixel, per million heatmap cells searched for hotspots, per slide prepared,
  per megapixel decoded for a tissue mask)
  as exponential moving averages that start from the config's prior guesses. A classifier batch
  runs at one shape whatever its number of patches (:func:`stages.nets.padded_forward`), so
  grading ``n`` patches costs ``n`` reads plus whole batches (:meth:`CostModel.patch_seconds`).

All times are seconds of ``clock`` (``time.monotonic`` by default; tests pass a fake clock).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Each coarser pyramid page has about a quarter of the pixels, so costs the detector ≈ 4× less.
COARSER_PAGE_SPEEDUP = 4.0


@dataclass(frozen=True)
class BudgetConfig:
    """How the run's time is spent.

    ``reserve_s``: kept back for writing the submission; ``min_k`` / ``max_k``: hotspots graded per
    slide (the detector leaves the slide time for ``min_k`` of them; a slide without a detector pass
    takes ``min_k`` hotspots from its tissue); ``batch_size``: hotspots per classifier batch at most
    (fewer where memory is short: :mod:`stages.memory`); ``detector_fraction``: share of a slide's
    allotment the detector may use before a coarser page is chosen; ``tissue_fraction``: share of a
    slide's allotment the tissue mask may spend decoding a slide without an overview page (one
    whose coarsest page is above ``tissue.max_page_pixels``) before it samples the page instead
    (:func:`stages.tissue.mask_for_slide`); ``min_slide_s``: below this much usable time (and
    below the cheapest path's estimated cost) no slide is started; ``prior_patch_s`` /
    ``prior_batch_s`` / ``prior_detector_mpx_s`` / ``prior_hotspots_mcell_s`` /
    ``prior_prepare_s`` / ``prior_decode_mpx_s``: cost guesses (seconds per patch read, per
    classifier batch run, per detector megapixel, per million heatmap cells searched for hotspots,
    per slide opened and its tissue found, per megapixel of a slide's pages decoded for its tissue
    mask) used until measured; ``ema_alpha``: weight of the newest measurement in the moving
    averages; ``slack``: share of a slide's allotment its plans leave unspent, against the
    estimates' errors (what a slide leaves rolls over to the later ones); ``stage2``: False turns
    the patch classifier off (the hotspots' heatmap probabilities alone decide).
    """

    reserve_s: float = 30.0
    min_k: int = 4
    max_k: int = 32
    batch_size: int = 8
    detector_fraction: float = 0.5
    tissue_fraction: float = 0.25
    min_slide_s: float = 1.0
    prior_patch_s: float = 0.05
    prior_batch_s: float = 0.05
    prior_detector_mpx_s: float = 1.0
    prior_prepare_s: float = 0.25
    prior_hotspots_mcell_s: float = 0.05
    prior_decode_mpx_s: float = 0.01
    ema_alpha: float = 0.3
    slack: float = 0.1
    stage2: bool = True

    @property
    def kept_patches(self) -> int:
        """Patches a slide's time is kept for before the detector's: ``min_k``, or 0 without
        stage 2."""
        return self.min_k if self.stage2 else 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.reserve_s) and self.reserve_s >= 0):
            raise ValueError(f"budget.reserve_s must be finite and >= 0, got {self.reserve_s}")
        if not 0 <= self.min_k <= self.max_k or self.max_k < 1:
            raise ValueError(
                f"budget needs 0 <= min_k <= max_k and max_k >= 1, got {self.min_k}, {self.max_k}"
            )
        if self.batch_size < 1:
            raise ValueError(f"budget.batch_size must be >= 1, got {self.batch_size}")
        for name in ("detector_fraction", "tissue_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"budget.{name} must be in (0, 1], got {getattr(self, name)}")
        if not (math.isfinite(self.min_slide_s) and self.min_slide_s >= 0):
            raise ValueError(f"budget.min_slide_s must be finite and >= 0, got {self.min_slide_s}")
        priors = (
            self.prior_patch_s,
            self.prior_batch_s,
            self.prior_detector_mpx_s,
            self.prior_prepare_s,
            self.prior_hotspots_mcell_s,
            self.prior_decode_mpx_s,
        )
        if not min(priors) > 0:
            raise ValueError(
                "budget.prior_patch_s, prior_batch_s, prior_detector_mpx_s, prior_prepare_s, "
                "prior_hotspots_mcell_s and prior_decode_mpx_s must be positive"
            )
        if not 0 < self.ema_alpha <= 1:
            raise ValueError(f"budget.ema_alpha must be in (0, 1], got {self.ema_alpha}")
        if not 0 <= self.slack < 1:
            raise ValueError(f"budget.slack must be in [0, 1), got {self.slack}")


class Ema:
    """Exponential moving average starting from a prior guess, which the first measurement
    replaces: ``value ← (1 − alpha) · value + alpha · x`` from the second measurement on.
    ``peak`` is a decaying maximum of the same measurements, for a cost that is better
    overestimated: ``peak ← max(x, (1 − alpha) · peak + alpha · x)``."""

    def __init__(self, prior: float, alpha: float) -> None:
        self.value = self.peak = prior
        self.alpha = alpha
        self.count = 0

    def update(self, x: float) -> None:
        if self.count == 0:
            self.value = self.peak = x
        else:
            self.value = (1 - self.alpha) * self.value + self.alpha * x
            self.peak = max(x, (1 - self.alpha) * self.peak + self.alpha * x)
        self.count += 1


class CostModel:
    """Measured costs: ``patch.value`` (seconds to read one patch), ``batch.value`` (seconds
    to run the classifier on one batch, whatever its number of patches), ``detector.value``
    (seconds per detector megapixel, the heatmap's assembly included), ``hotspots.value``
    (seconds per million heatmap cells to select its hotspots), ``prepare.value`` (seconds
    to open a slide and find its tissue) and ``decode.value`` (seconds per megapixel decoded for a
    slide's tissue mask, :class:`stages.slide.ReadStats`), updated by the cascade after each batch /
    detector pass / slide. ``batch_size``: the patches of a classifier batch."""

    def __init__(self, config: BudgetConfig) -> None:
        self.batch_size = config.batch_size
        self.patch = Ema(config.prior_patch_s, config.ema_alpha)
        self.batch = Ema(config.prior_batch_s, config.ema_alpha)
        self.detector = Ema(config.prior_detector_mpx_s, config.ema_alpha)
        self.hotspots = Ema(config.prior_hotspots_mcell_s, config.ema_alpha)
        self.prepare = Ema(config.prior_prepare_s, config.ema_alpha)
        self.decode = Ema(config.prior_decode_mpx_s, config.ema_alpha)

    def observe_prepare(self, seconds: float) -> None:
        """Record that preparing a slide (open, tissue mask, read-ahead) took ``seconds``."""
        if seconds < 0:
            raise ValueError(f"need seconds >= 0, got {seconds}")
        self.prepare.update(seconds)

    def observe_decode(self, pixels: int, seconds: float) -> None:
        """Record that the reads of a slide's tissue mask decoded ``pixels`` pixels in
        ``seconds``."""
        if pixels < 1 or seconds < 0:
            raise ValueError(f"need pixels >= 1 and seconds >= 0, got {pixels}, {seconds}")
        self.decode.update(seconds / (pixels / 1e6))

    def decodable_pixels(self, seconds: float) -> float:
        """Pixels a tissue mask's reads are estimated to decode in ``seconds`` (≥ 0)."""
        return max(seconds, 0.0) / self.decode.value * 1e6

    def observe_patches(self, n: int, read_s: float, run_s: float) -> None:
        """Record that reading ``n`` patches took ``read_s`` and the classifier's batch on them
        ``run_s``."""
        if n < 1 or read_s < 0 or run_s < 0:
            raise ValueError(f"need n >= 1 patches and seconds >= 0, got {n}, {read_s}, {run_s}")
        self.patch.update(read_s / n)
        self.batch.update(run_s)

    def patch_seconds(self, n: int, peak: bool = False) -> float:
        """Estimated seconds to grade ``n`` patches: ``n`` reads and ⌈n / batch_size⌉ batches
        (at their decaying peaks with ``peak``, for work that cannot be stopped part way)."""
        patch, batch = (
            (self.patch.peak, self.batch.peak) if peak else (self.patch.value, self.batch.value)
        )
        return n * patch + math.ceil(n / self.batch_size) * batch

    def observe_detector(self, pixels: int, seconds: float) -> None:
        """Record that the detector took ``seconds`` over a page of ``pixels`` pixels."""
        if pixels < 1 or seconds < 0:
            raise ValueError(f"need pixels >= 1 and seconds >= 0, got {pixels}, {seconds}")
        self.detector.update(seconds / (pixels / 1e6))

    def observe_hotspots(self, cells: int, seconds: float) -> None:
        """Record that selecting the hotspots of a heatmap of ``cells`` cells took
        ``seconds``."""
        if cells < 1 or seconds < 0:
            raise ValueError(f"need cells >= 1 and seconds >= 0, got {cells}, {seconds}")
        self.hotspots.update(seconds / (cells / 1e6))

    def hotspot_seconds(self, cells: int) -> float:
        """Estimated seconds to select the hotspots of a heatmap of ``cells`` cells."""
        return cells / 1e6 * self.hotspots.value

    def detector_seconds(self, pixels: int) -> float:
        """Estimated detector seconds over a page of ``pixels`` pixels."""
        return pixels / 1e6 * self.detector.value

    def slide_floor(self, min_k: int) -> float:
        """Estimated seconds of a slide's cheapest graded path: prepared (at the decaying
        maximum of the preparations measured: it cannot be stopped part way), then ``min_k``
        patches of its tissue graded."""
        return self.prepare.peak + self.patch_seconds(min_k)


class SlideBudget:
    """One slide's share of the run, made by :meth:`RunBudget.start_slide`.

    ``deadline`` = start + allotment, never beyond the run's end minus its reserve
    (``run_deadline``).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        allotment: float,
        run_deadline: float,
        config: BudgetConfig,
    ) -> None:
        self._clock = clock
        self.config = config
        self.start = clock()
        self.allotment = allotment
        self.run_deadline = run_deadline
        self.deadline = min(self.start + allotment, run_deadline)

    def time_left(self) -> float:
        """Seconds left before this slide's deadline (≥ 0)."""
        return max(0.0, self.deadline - self._clock())

    def plan_left(self) -> float:
        """Seconds the slide's next units of work may be planned into: :meth:`time_left` less
        ``slack`` of the allotment (≥ 0)."""
        return max(0.0, self.time_left() - self.config.slack * self.allotment)

    def expand_next(self, k_done: int, patch_s: float, batch_s: float = 0.0) -> int:
        """How many hotspots the next batch may grade, ``k_done`` being graded already.

        At most ``batch_size`` and up to ``max_k`` in all; as many as fit :meth:`plan_left`
        at ``patch_s`` seconds each (their reads) plus ``batch_s`` (the batch's run, the same
        for any number of patches); 0 when not even one fits.
        """
        if k_done < 0 or patch_s < 0 or batch_s < 0:
            raise ValueError(
                f"k_done, patch_s and batch_s must be >= 0, got {k_done}, {patch_s}, {batch_s}"
            )
        n = min(self.config.batch_size, self.config.max_k - k_done)
        usable = self.plan_left() - batch_s
        if n <= 0 or usable < 0:
            return 0
        fits = n if patch_s == 0 else math.floor(usable / patch_s)
        return min(n, fits)

    def choose_detector_page(
        self,
        base_page: int,
        n_pages: int,
        est_cost_at_base_s: float,
        keep_s: float = 0.0,
        least_s: float = 0.0,
    ) -> int | None:
        """The first page from ``base_page`` on whose estimated detector cost (÷ 4 per coarser
        page, but never below ``least_s``, the cost of one batch) fits both
        ``detector_fraction`` of the allotment and :meth:`plan_left` less ``keep_s`` (kept for
        the hotspots and ``min_k`` patches); the last page if none does, or None when even the
        last page's cost exceeds that time (the slide then takes the cheaper path without the
        detector)."""
        if not 0 <= base_page < n_pages:
            raise ValueError(f"base_page {base_page} out of range 0..{n_pages - 1}")
        usable = self.plan_left() - keep_s
        limit = min(self.config.detector_fraction * self.allotment, usable)
        page, cost = base_page, max(est_cost_at_base_s, least_s)
        while cost > limit and page < n_pages - 1:
            page, cost = page + 1, max(cost / COARSER_PAGE_SPEEDUP, least_s)
        if cost > usable:
            log.info(
                "no detector pass: its cheapest, page %d, is estimated at %.2f s > %.2f s usable",
                page,
                cost,
                usable,
            )
            return None
        if page != base_page:
            log.info(
                "detector page %d instead of %d: estimated %.1f s > %.1f s allowed",
                page,
                base_page,
                est_cost_at_base_s,
                limit,
            )
        return page


class RunBudget:
    """The run's time limit shared over ``n_slides`` slides; starts when created."""

    def __init__(
        self,
        time_limit_s: float,
        n_slides: int,
        config: BudgetConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(time_limit_s) and time_limit_s > 0) or n_slides < 0:
            raise ValueError(
                f"need time_limit_s > 0 and n_slides >= 0, got {time_limit_s}, {n_slides}"
            )
        self.config = config
        self.n_slides = n_slides
        self.costs = CostModel(config)
        self._clock = clock
        self._end = clock() + time_limit_s
        self._finished = 0
        self._skipped_in_a_row = 0
        self._current: SlideBudget | None = None

    @property
    def slides_left(self) -> int:
        """Slides not yet finished (the current one included)."""
        return self.n_slides - self._finished

    def remaining(self) -> float:
        """Seconds before the run's hard end (≥ 0)."""
        return max(0.0, self._end - self._clock())

    def _usable(self) -> float:
        return max(0.0, self.remaining() - self.config.reserve_s)

    def affordable(self) -> int:
        """How many more slides the time before the reserve pays for at the cheapest path's
        cost (:meth:`CostModel.slide_floor`), at most the slides left."""
        floor = self.costs.slide_floor(self.config.kept_patches)
        fits = math.floor(self._usable() / floor) if floor > 0 else self.slides_left
        return min(self.slides_left, fits)

    def allotment(self) -> float:
        """Seconds for the next slide: (remaining − reserve) / slides left, ≥ 0; when fewer
        slides are :meth:`affordable` than are left, (remaining − reserve) / affordable."""
        if self.slides_left <= 0:
            raise RuntimeError(f"all {self.n_slides} slides are finished")
        return self._usable() / max(1, self.affordable())

    def skip_next(self) -> bool:
        """Whether the next slide gets the prior row unread (then counted as finished, at no
        cost). Slides are skipped only when fewer are :meth:`affordable` than are left, evenly:
        one is graded after ``slides left / affordable − 1`` skipped in a row (all skipped when
        none is affordable)."""
        if self._current is not None:
            raise RuntimeError("skip_next() called before finish_slide() of the current slide")
        left, affordable = self.slides_left, self.affordable()
        if affordable >= left or (affordable and self._skipped_in_a_row + 1 >= left / affordable):
            self._skipped_in_a_row = 0
            return False
        self._skipped_in_a_row += 1
        self._finished += 1
        log.info(
            "skipping a slide: %.2f s left for %d slides, %d affordable at %.2f s each",
            self._usable(),
            left,
            affordable,
            self.costs.slide_floor(self.config.kept_patches),
        )
        return True

    def exhausted(self) -> bool:
        """True when the time left before the reserve is under ``min_slide_s`` and under the
        cheapest path's cost (:meth:`CostModel.slide_floor`): start no more slides. (With
        fractions of a second a slide, the last second still pays for a few.)"""
        floor = self.costs.slide_floor(self.config.kept_patches)
        return self.remaining() - self.config.reserve_s < min(self.config.min_slide_s, floor)

    def start_slide(self) -> SlideBudget:
        """Begin the next slide with its allotment; :meth:`finish_slide` must follow."""
        if self._current is not None:
            raise RuntimeError("start_slide() called before finish_slide() of the previous slide")
        allotment = self.allotment()
        self._current = SlideBudget(
            self._clock, allotment, self._end - self.config.reserve_s, self.config
        )
        return self._current

    def finish_slide(self) -> None:
        """End the current slide; its unused time rolls over to the slides left."""
        if self._current is None:
            raise RuntimeError("finish_slide() called without start_slide()")
        used = self._clock() - self._current.start
        log.debug("slide took %.2f s of %.2f s allotted", used, self._current.allotment)
        self._finished += 1
        self._current = None
