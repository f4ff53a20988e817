"""Outlines: tissue fragments (an ellipse modulated by harmonics) and random irregular ellipses
(nuclei, halos, lesion blobs). Points are ``(x, y)`` float64 arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from training.data.synthetic.spec import Fragment

# -- outlines -----------------------------------------------------------------------------------


def radial_outline(
    t: np.ndarray, shape: Sequence[float], a: float, b: float
) -> tuple[np.ndarray, np.ndarray]:
    """Points of an ellipse (semi-axes a, b) at parametric angles t, radius modulated by
    harmonics 2.. with (amplitude, phase) pairs ``shape``."""
    radius = np.ones_like(t)
    for k, (amp, phase) in enumerate(zip(shape[::2], shape[1::2], strict=True), start=2):
        radius += amp * np.cos(k * t + phase)
    radius = np.clip(radius, 0.45, 1.6)
    return a * radius * np.cos(t), b * radius * np.sin(t)


def random_shape(rng: np.random.Generator, irregular: float, n: int = 4) -> tuple[float, ...]:
    pairs = [
        (irregular / math.sqrt(k) * rng.standard_normal(), rng.uniform(0, 2 * math.pi))
        for k in range(2, 2 + n)
    ]
    return tuple(float(v) for pair in pairs for v in pair)


def fragment_outline(fragment: Fragment, mpp: float, n: int = 256) -> np.ndarray:
    """(n, 2) float64 page-0 (x, y) outline of ``fragment``; vertex i at angle 2πi/n."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    u, v = radial_outline(t, fragment.shape, fragment.length_um / 2, fragment.width_um / 2)
    c, s = math.cos(math.radians(fragment.angle_deg)), math.sin(math.radians(fragment.angle_deg))
    return np.stack([fragment.cx + (u * c - v * s) / mpp, fragment.cy + (u * s + v * c) / mpp], 1)


def fragment_point(
    fragment: Fragment, mpp: float, t: float, depth_um: float
) -> tuple[float, float]:
    """Page-0 point at parametric angle ``t`` of ``fragment``'s outline, ``depth_um`` inwards."""
    u, v = radial_outline(
        np.array([t]), fragment.shape, fragment.length_um / 2, fragment.width_um / 2
    )
    radius = math.hypot(u[0], v[0])
    scale = max(radius - depth_um, 0.0) / radius
    c, s = math.cos(math.radians(fragment.angle_deg)), math.sin(math.radians(fragment.angle_deg))
    x, y = float(u[0]) * scale, float(v[0]) * scale
    return fragment.cx + (x * c - y * s) / mpp, fragment.cy + (x * s + y * c) / mpp


def irregular_outlines(
    rng: np.random.Generator,
    a: np.ndarray,
    b: np.ndarray,
    angle: np.ndarray,
    irregular: float,
    points: int = 20,
) -> np.ndarray:
    """(n, points, 2) random irregular ellipses with semi-axes ``a``, ``b`` (n,), rotated by
    ``angle`` (n,) radians, around the origin."""
    n = len(a)
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    k = np.arange(2, 6)
    amp = irregular / np.sqrt(k) * rng.standard_normal((n, len(k)))
    phase = rng.uniform(0, 2 * math.pi, (n, len(k)))
    radius = 1 + np.einsum("nk,nkp->np", amp, np.cos(k[None, :, None] * t + phase[..., None]))
    radius = np.clip(radius, 0.45, 1.6)
    u, v = a[:, None] * radius * np.cos(t), b[:, None] * radius * np.sin(t)
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return np.stack([u * c - v * s, u * s + v * c], -1)
