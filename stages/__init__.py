"""The runtime library that ``main.py`` runs: one slide through the cascade, a run of slides into
``submission.csv``. It imports nothing from ``training/`` (the submission ships ``main.py``,
``stages/`` and ``assets/`` only). Modules, roughly from the run down to the pixels:

- ``cli``: ``main.py``'s options (``python main.py --help``; ``tissuenet grade``).
- ``runtime``: the runtime job: every slide of ``data/`` through the cascade into the submission.
- ``record``: what a run keeps and writes: outcomes, the checkpointed submission, log lines.
- ``budget``: one global time limit shared over the slides of a run, and the per-slide budget.
- ``prefetch``: reading the next slide while the networks work on this one.
- ``device``: choosing the device the networks run on, and why a GPU cannot be used.
- ``cascade``: one slide through tissue → heatmap → hotspots → graded patches → decision.
- ``result``: what the cascade made of one slide (``SlideResult``) and its ``.npz``/``.json``.
- ``tissue``: the tissue mask of a low-resolution page (no glass, ink or dark artefacts).
- ``detector``: stage 1, the segmentation network's lesion heatmap over the tissue.
- ``hotspots``: the heatmap's top peaks as page-0 patch boxes for stage 2.
- ``classifier``: stage 2, grading high-resolution patches centred on the hotspots.
- ``encoders``: stage 2's timm encoders (foundation models' ``ENCODER_CARDS``) and checkpoints.
- ``memory``: how many patches one classifier batch may hold.
- ``decision``: graded patches and heatmap → class probabilities → least-cost class.
- ``nets``: torch plumbing shared by both networks: inputs, precision, weight files.
- ``config``: the cascade's configuration (``assets/config.json``) and loading the assets.
- ``slide``: one reader for pyramidal slides (TissueNet TIFs, SVS, OME-TIFF) on pyvips.
- ``tiffjpeg``: JPEG-in-TIFF colour that libvips cannot see (YCbCr tagged RGB).
- ``geometry``: the one coordinate convention (page-0 px, x right, y down) and page maths.
- ``submission``: the competition's CSV formats and writing the submission file.
- ``metric``: the competition's weighted class score (``python -m stages.metric``).
- ``geojson``: a slide's result as GeoJSON for QuPath.
"""
