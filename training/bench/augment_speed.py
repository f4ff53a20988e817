"""Time per sample of the training augmentation (:mod:`training.data.augment`) on one core.

``python -m training.bench.augment_speed [--repeats N]`` prints the milliseconds per sample of
:class:`~training.data.augment.SampleAugment` and :class:`~training.data.augment.BatchAugment`
(on CUDA too when there is one) on a crop of a real H&E tile, next to the albumentations
pipeline they replaced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from stages.nets import IMAGENET_MEAN, IMAGENET_STD
from training.cli import command_parser
from training.data.augment import BatchAugment, SampleAugment, dihedral

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference"


def _sample_inputs(side: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """A real H&E crop (side, side, 3) uint8 from the reference tiles and a tissue-like mask."""
    path = REFERENCE / "tiles" / "medium-nuclei-score-level0.png"
    tile = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    y, x = (tile.shape[0] - side) // 2, (tile.shape[1] - side) // 2
    crop = np.ascontiguousarray(tile[y : y + side, x : x + side])
    mask = (crop.mean(axis=2) < 180).astype(np.uint8)
    return crop, mask


def _times(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Median, 95th percentile and mean milliseconds of ``fn()`` over ``repeats`` calls (after
    5 unmeasured ones)."""
    for _ in range(5):
        fn()
    spent = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        spent.append((time.perf_counter() - start) * 1e3)
    return float(np.median(spent)), float(np.percentile(spent, 95)), float(np.mean(spent))


def _old_pipeline(size: int) -> Callable[..., dict[str, np.ndarray]]:
    """The albumentations pipeline that :class:`SampleAugment` and :class:`BatchAugment`
    replaced, kept only for :func:`benchmark`'s comparison."""
    import albumentations as A  # noqa: N812 (its documented alias)

    return A.Compose(
        [
            A.SquareSymmetry(p=1.0),
            A.Affine(
                scale=(0.9, 1.1),
                rotate=(-15, 15),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.7,
            ),
            A.HEStain(method="random_preset", p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
            A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=15, val_shift_limit=0, p=0.5),
            A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.1, 1.2), p=0.2),
            A.ImageCompression(quality_range=(60, 95), p=0.5),
            A.CenterCrop(size, size),
        ],
        seed=0,
    )


def benchmark(repeats: int = 500, batches: int = 10) -> None:
    """Print ms per sample of :class:`SampleAugment` and :class:`BatchAugment` on one core
    (and of :class:`BatchAugment` on CUDA when there is one), next to the albumentations
    pipeline they replaced."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    window, window_mask = _sample_inputs(320)
    patch = cv2.resize(window, (160, 160), interpolation=cv2.INTER_AREA)
    cases = [
        ("detector window 320²→256² + mask", window, window_mask, 256),
        ("tiny patch      160²→128²       ", patch, None, 128),
        ("standard patch  320²→256²       ", window, None, 256),
    ]
    print("ms per sample, one core (cv2 and torch threads 1): median / p95 / mean")
    for name, image, mask, size in cases:
        augment, rng = SampleAugment(size, train=True), np.random.default_rng(0)
        new = _times(lambda a=augment, im=image, m=mask, r=rng: a(im, m, r), repeats)
        old_pipeline = _old_pipeline(size)
        kwargs = {"image": image} if mask is None else {"image": image, "mask": mask}
        old = _times(lambda a=old_pipeline, kw=kwargs: a(**kw), max(repeats // 5, 20))
        print(
            f"  {name}  SampleAugment {new[0]:5.2f} / {new[1]:5.2f} / {new[2]:5.2f}"
            f"   old albumentations (all of it) {old[0]:5.2f} / {old[1]:5.2f} / {old[2]:5.2f}"
        )
    offsets = np.random.default_rng(1).integers(0, 64, (32, 2))
    crops = [dihedral(window[o : o + 256, o : o + 256], int(k)) for o, k in offsets]
    batch = torch.from_numpy(np.stack(crops))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        on_device = batch.to(device)
        for train in (True, False):
            module = BatchAugment(IMAGENET_MEAN, IMAGENET_STD, train=train).to(device)
            generator = torch.Generator(device=device).manual_seed(0)

            def step(
                m: BatchAugment = module,
                x: torch.Tensor = on_device,
                g: torch.Generator = generator,
            ) -> None:
                m(x, g)
                if x.is_cuda:
                    torch.cuda.synchronize()

            median, p95, mean = (t / len(batch) for t in _times(step, batches))
            what = "train (colour + normalise)" if train else "eval (normalise only)     "
            print(
                f"  BatchAugment {what} on {device.type}, batches of 32 × 256²: "
                f"{median:6.3f} / {p95:6.3f} / {mean:6.3f}"
            )


def main(argv: list[str] | None = None) -> None:
    """``python -m training.bench.augment_speed [--repeats N]``."""
    parser = command_parser("training.bench.augment_speed", __doc__)
    parser.add_argument("--repeats", type=int, default=500, help="samples per timing")
    args = parser.parse_args(argv)
    benchmark(args.repeats)


if __name__ == "__main__":
    main()
