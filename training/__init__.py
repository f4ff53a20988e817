"""Everything that makes ``assets/`` and measures it; none of it ships in the submission.

Imports go one way, from a layer to the same or a lower one (checked by ``make lint``: the
import-linter contract in ``pyproject.toml``), top to bottom:

- ``pipeline``: ``make train``, every step below in order.
- ``bench``: benchmarks (speed against exhaustive tiling, training scale and speed, Ray
  scaling, the GPU smoke test, augmentation timing).
- ``cluster`` (grading on a Ray cluster), ``evaluate`` (held-out evaluation, cohort review,
  frozen-head comparison), ``inspect`` (HTML report, QuPath export, figures).
- ``pack``: ``assets/`` written (``export``), the submission zip packed and run (``package``).
- ``fit``: the stage trainers, hard-negative mining and the decision fit.
- ``data``: training data: generated slides (``synthetic``), conversion, checks, the cache.
- ``presets`` (networks and training defaults), ``stageio`` (stage and assets files),
  ``process`` (child processes, memory readings), ``cli`` (parsers, logging).
- ``stages``, the runtime library, below all of them.
"""
