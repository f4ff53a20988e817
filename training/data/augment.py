"""Augmentation for both stages (albumentations).

Windows and patches are cut ``crop_factor`` larger than the network input
(:mod:`training.data.cache`); the pipeline transforms the larger crop, then centre-crops the
input size, so that rotations and scale jitter leave no borders. Masks go through the same
geometric transforms (nearest-neighbour) and stay aligned; colour transforms touch the image
only. What it does, in order:

* flips and 90° rotations (the dihedral group: slides have no orientation);
* small scale jitter (±10 %) and rotation (±15°);
* ``HEStain``: haematoxylin / eosin stain variation, as between centres;
* brightness, contrast, hue and saturation;
* blur (out-of-focus areas) and ``ImageCompression`` (JPEG; slides are JPEG Q75);
* a centre crop to the input size.
"""

from __future__ import annotations

import albumentations as A  # noqa: N812 (its documented alias)
import cv2


def pipeline(size: int, train: bool) -> A.Compose:
    """Transform of an ``(S, S, 3)`` uint8 crop (and optional ``mask``) to ``(size, size)``;
    without ``train`` only the centre crop."""
    crop = A.CenterCrop(size, size)
    if not train:
        return A.Compose([crop])
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
            crop,
        ]
    )
