"""``python -m training.evaluate``: the held-out evaluation (:mod:`training.evaluate.explain`)."""

from training.evaluate.explain import main

raise SystemExit(main())
