"""Synthetic TissueNet slides: pyramidal JPEG TIFFs and the competition's CSVs.

A slide is described by a frozen :class:`SlideSpec` (size, µm/pixel, tissue fragments, lesions,
look-alikes, artefacts; every position in page-0 pixels, y down, every physical size in µm) and
rendered in two scales:

* a low-resolution **label map** (numpy, one label pixel = ``zoom`` page-0 pixels, about 2 µm):
  tissue type per pixel (:class:`Tissue`), a soft tissue alpha, an artefact colour/alpha overlay
  and a blur mask;
* a small bank of seamless **texture tiles**, one per tissue type, drawn cell by cell with OpenCV
  at the slide's µm/pixel (nuclei 5–18 µm) in haematoxylin/eosin optical density.

Page 0 is composed lazily in pyvips (label map zoomed, textures replicated, ``case`` picks a
texture per pixel, blends add the tissue edge, blur patches and artefacts) and streamed to a
pyramidal TIFF (512 × 512 JPEG Q75 tiles, each page half the previous until it fits one tile,
resolution tags in px/cm), so a 20k × 20k slide takes seconds.

In the default cohort, lesion grade (1 low-grade, 2 high-grade, 3 invasive) lives in cytology
only. Every grade paints the same footprint (full-thickness replacement of the epithelium in its
blob, deep enough to cover the 300 µm square centred on it); lesions of different grades never
overlap. Lesion and look-alike (dense inflammation, reactive epithelium) textures share one cell
layout and differ in fine detail (koilocyte halos and wrinkled nuclei, clumped chromatin and
mitoses, vesicular nuclei with nucleoli, small dense round nuclei, uniform small nuclei with clear
cytoplasm); above ~1 µm they are swapped for one common texture a little darker than normal
epithelium, so at 4 µm/pixel they look alike and only pages 0–1 tell them apart.

The ``realistic`` cohort (``COHORTS["realistic"]``, :mod:`.cohort`) draws lesions 80–1,500 µm
across graded by depth (:mod:`.depth`: atypia in the lower third of the epithelium for grade 1,
two-thirds to all of it for grade 2, nests below the basement membrane for grade 3, maturing
``REACTIVE`` cells above, which share the suspicious low-resolution texture), the worst often a
small focus beside larger lower-grade areas, reactive-epithelium mimics, synthetic centres (stain,
scanner blur, JPEG quality, µm/px; one held out of the train split), unannotated lesions and
noisy written labels; :mod:`.truth_tables` writes its ground truth (``truth_lesions.csv``,
``truth_slides.csv``).

Slides come from :func:`sample_specs` (random, either cohort, class mix configurable,
deterministic per seed)
or :func:`layout_specs` (real slides' sizes, resolutions and annotated boxes, optionally scaled
down). :func:`write_sparse_canvas` writes huge mostly-glass slides (e.g. 271,950 × 294,038 px)
in seconds as a few MB: every glass tile points at one shared JPEG tile.

Modules, in the order a slide is made: :mod:`.spec` (what a slide holds), :mod:`.sampling`
(the default cohort's random specs, layout-driven specs), :mod:`.cohort` (the ``realistic``
cohort, :data:`COHORTS` and :func:`sample_specs`), :mod:`.options` (the generator's CLI options),
:mod:`.shapes`, :mod:`.maps`, :mod:`.depth` (layered lesions), :mod:`.textures`, :mod:`.render`
(page 0 and the TIFF), :mod:`.canvas` (sparse canvases), :mod:`.dataset` (a competition folder),
:mod:`.truth_tables` (ground-truth tables); :mod:`.truth` checks a generated folder against the
generator's ground truth.

CLI: ``python -m training.data.synthetic OUT_DIR --slides N --seed S --split {train,test}``
(``--cohort realistic``, ``--class-mix``, ``--size-range``, ``--layout META ANN --scale F``,
``--sparse-canvas W H``, ``--light`` or ``--light-only``, ``--benchmark``; see ``--help``). The
output directory has the competition's files (``{split}_metadata.csv``, ``{split}_labels.csv``,
``train_annotations.csv`` or ``submission_format.csv`` and ``test_labels.csv``) and the ground
truth (``truth_*.csv``); with ``--light``, DrivenData's light files too (the 32× downsampled
``downsampled_images/<stem>.jpg`` and the crops ``annotated_regions/<annotation_id>.jpeg``:
:mod:`training.data.light`), beside the TIFs or, ``--light-only``, instead of them.
"""

from training.data.synthetic.canvas import place, pyramid_sizes, write_sparse_canvas
from training.data.synthetic.cohort import (
    CENTRES,
    COHORTS,
    HELD_OUT,
    Centre,
    Realism,
    sample_specs,
)
from training.data.synthetic.dataset import SPLITS, generate_dataset, posix_cksum, write_dataset
from training.data.synthetic.maps import Maps, label_zoom, render_maps
from training.data.synthetic.render import compose, write_slide
from training.data.synthetic.sampling import SynthConfig, layout_specs, random_spec
from training.data.synthetic.spec import (
    ANNOTATION_UM,
    EPITHELIAL,
    LESION_TISSUE,
    MPP_RANGE,
    Artefact,
    Fragment,
    Layers,
    Lesion,
    LookAlike,
    SlideSpec,
    Tissue,
    annotation_box,
    slide_annotations,
)
from training.data.synthetic.textures import BALANCED, CELL_STYLES, Stain, texture_bank

__all__ = [
    "ANNOTATION_UM",
    "BALANCED",
    "CELL_STYLES",
    "CENTRES",
    "COHORTS",
    "EPITHELIAL",
    "HELD_OUT",
    "LESION_TISSUE",
    "MPP_RANGE",
    "SPLITS",
    "Artefact",
    "Centre",
    "Fragment",
    "Layers",
    "Lesion",
    "LookAlike",
    "Maps",
    "Realism",
    "SlideSpec",
    "Stain",
    "SynthConfig",
    "Tissue",
    "annotation_box",
    "compose",
    "generate_dataset",
    "label_zoom",
    "layout_specs",
    "place",
    "posix_cksum",
    "pyramid_sizes",
    "random_spec",
    "render_maps",
    "sample_specs",
    "slide_annotations",
    "texture_bank",
    "write_dataset",
    "write_slide",
    "write_sparse_canvas",
]
