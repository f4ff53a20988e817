"""Outlines: tissue fragments (an ellipse modulated by harmonics) and random irregular ellipses
(nuclei, halos, lesion blobs). Points are ``(x, y)`` float64 arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from training.data.synthetic.spec import Fragment

#: Radius modulation of random outlines is clipped to ``[MIN_REACH, MAX_REACH]`` x the semi-axis,
#: so a blob ``size`` across reaches at most ``MAX_REACH * size / 2`` from its centre.
MIN_REACH, MAX_REACH = 0.45, 1.6

# -- outlines -----------------------------------------------------------------------------------


def radial_outline(
    t: np.ndarray, shape: Sequence[float], a: float, b: float
) -> tuple[np.ndarray, np.ndarray]:
    """Points of an ellipse (semi-axes a, b) at parametric angles t, radius modulated by
    harmonics 2.. with (amplitude, phase) pairs ``shape``."""
    radius = np.ones_like(t)
    for k, (amp, phase) in enumerate(zip(shape[::2], shape[1::2], strict=True), start=2):
        radius += amp * np.cos(k * t + phase)
    radius = np.clip(radius, MIN_REACH, MAX_REACH)
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
    """Page-0 point ``depth_um`` inwards of ``fragment``'s outline at parametric angle ``t``,
    along the outline's inward normal (at most ``0.45 * width_um`` deep, so that it stays
    inside)."""
    dt = 1e-3
    u, v = radial_outline(
        np.array([t - dt, t, t + dt]), fragment.shape, fragment.length_um / 2,
        fragment.width_um / 2,
    )  # fmt: skip
    tu, tv = u[2] - u[0], v[2] - v[0]  # counter-clockwise tangent: the inside is on its left
    norm = math.hypot(tu, tv) or 1.0
    depth = min(depth_um, 0.45 * fragment.width_um)
    x, y = float(u[1]) - depth * tv / norm, float(v[1]) + depth * tu / norm
    c, s = math.cos(math.radians(fragment.angle_deg)), math.sin(math.radians(fragment.angle_deg))
    return fragment.cx + (x * c - y * s) / mpp, fragment.cy + (x * s + y * c) / mpp


def irregular_outlines(
    rng: np.random.Generator,
    a: np.ndarray,
    b: np.ndarray,
    angle: np.ndarray,
    irregular: float,
    points: int = 20,
    wrinkle: float = 0.0,
) -> np.ndarray:
    """(n, points, 2) random irregular ellipses with semi-axes ``a``, ``b`` (n,), rotated by
    ``angle`` (n,) radians, around the origin. ``irregular`` sets harmonics 2–5 of the radius,
    ``wrinkle`` (> 0: ``points`` should be 32 or more) adds harmonics 6–11: a crinkled contour."""
    n = len(a)
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    k = np.arange(2, 6)
    amp = irregular / np.sqrt(k) * rng.standard_normal((n, len(k)))
    phase = rng.uniform(0, 2 * math.pi, (n, len(k)))
    radius = 1 + np.einsum("nk,nkp->np", amp, np.cos(k[None, :, None] * t + phase[..., None]))
    if wrinkle:
        k = np.arange(6, 12)
        amp = wrinkle * rng.uniform(0.5, 1.0, (n, len(k))) * rng.choice((-1.0, 1.0), (n, len(k)))
        phase = rng.uniform(0, 2 * math.pi, (n, len(k)))
        radius += np.einsum("nk,nkp->np", amp, np.cos(k[None, :, None] * t + phase[..., None]))
    radius = np.clip(radius, MIN_REACH, MAX_REACH)
    u, v = a[:, None] * radius * np.cos(t), b[:, None] * radius * np.sin(t)
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return np.stack([u * c - v * s, u * s + v * c], -1)
