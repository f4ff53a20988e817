"""``python -m training.evaluate``: the held-out evaluation (:mod:`training.evaluate.heldout`)."""

from training.evaluate.heldout import main

raise SystemExit(main())
