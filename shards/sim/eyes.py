"""Built-in procedural eye simulator: 35x55 greyscale eyes with exact gaze and pupil labels.

Four domains share one renderer (same geometry, same label semantics):

- ``"synthetic"``: clean, flat-shaded, idealised renders (the role UnityEyes plays in the
  paper), gaze pitch ~ U(-25, 25) deg, yaw ~ U(-35, 35) deg.
- Three "real" domains (the role of MPIIGaze), each the same kind of scene with an appearance
  made in its own way, and its own gaze distribution (clipped to the synthetic range). Their
  labels exist for evaluation only. A refiner's defaults are chosen on all three together, so
  that no choice is proven only on the domain it was tuned on.

  - ``"real"``: a camera-response domain: duller and darker materials, a softer iris edge,
    skin texture, a linear illumination ramp, Gaussian blur, gamma, contrast and brightness
    changes, shot + read noise. Gaze pitch ~ N(-5, 10) deg, yaw ~ N(0, 15) deg.
  - ``"real-lit"``: a low-light webcam: Lambertian shading of a curved face and eyeball by a
    directional light with a soft brow shadow, defocus and motion blur (a disc swept along a
    line), strong signal-dependent shot noise, row banding and read noise, then auto-exposure.
    Gaze pitch ~ N(-10, 8) deg, yaw ~ N(5, 14) deg.
  - ``"real-ir"``: a near-infrared eye tracker: bright, smooth, waxy skin with little contrast
    to the sclera, a light, strongly textured iris, a black pupil, two sharp illuminator
    glints, radial fall-off of the illuminator, and JPEG compression of the frame the eye was
    cut from (8x8 blocks at twice the eye's scale, at a random phase). Gaze pitch ~ N(0, 12)
    deg, yaw ~ N(-3, 18) deg.

Gaze labels follow ``shards.gaze`` (MPIIGaze camera coordinates). The pupil centre is rendered
at ``eyeball_centre + R * (x, y)`` of the gaze vector, so positive yaw moves the pupil left
and positive pitch moves it up in the image. The ``pupil`` label is that geometric centre in
pixels (x right, y down, pixel centres at integer coordinates), also when an eyelid hides part
of the pupil.

Every sample depends only on ``(domain, seed, index)``: the stream is cut into blocks of
``BLOCK`` samples and each block draws from its own ``SeedSequence([seed, domain, block])``,
``domain`` being the index in ``DOMAINS`` (new domains are appended, so older streams keep
their samples).

Run ``python -m shards.sim.eyes OUT.png`` to write a grid of samples to look at.
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import expit

from shards.gaze import vector_from_pitchyaw

__all__ = ["DOMAINS", "IMAGE_SHAPE", "REAL_DOMAINS", "SIM_VERSION", "generate"]

IMAGE_SHAPE = (35, 55)
DOMAINS = ("synthetic", "real", "real-lit", "real-ir")
REAL_DOMAINS = DOMAINS[1:]
# Fixed forever: changing it changes every stream.
BLOCK = 256
# Bumped whenever rendering changes, so caches of built-in shards are rebuilt, not reused.
SIM_VERSION = 3

_H, _W = IMAGE_SHAPE
_F = np.float32
_Y = np.arange(_H, dtype=_F).reshape(1, _H, 1)
_X = np.arange(_W, dtype=_F).reshape(1, 1, _W)

_PITCH_LIMIT = np.radians(25.0)
_YAW_LIMIT = np.radians(35.0)


def generate(domain: str, count: int, seed: int, start: int = 0) -> dict[str, np.ndarray]:
    """Samples start .. start+count-1 of the infinite stream defined by (domain, seed).

    Sample i depends only on (domain, seed, i): generate(d, 10, s, start=5) equals
    generate(d, 20, s)[5:15] exactly.

    Returns {"image": uint8 (N, 35, 55), "gaze": float32 (N, 3) unit vectors (shards.gaze
    convention), "pitchyaw": float32 (N, 2) radians, "pupil": float32 (N, 2) pupil centre
    (x, y) in pixels, x right, y down, pixel centres at integer coordinates}.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    for name, value in (("count", count), ("seed", seed), ("start", start)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise ValueError(f"{name} must be an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if count == 0:
        return {
            "image": np.zeros((0, *IMAGE_SHAPE), np.uint8),
            "gaze": np.zeros((0, 3), _F),
            "pitchyaw": np.zeros((0, 2), _F),
            "pupil": np.zeros((0, 2), _F),
        }
    dom = DOMAINS.index(domain)
    first, last = start // BLOCK, (start + count - 1) // BLOCK
    parts = [_block(dom, int(seed), b) for b in range(first, last + 1)]
    lo = start - first * BLOCK
    return {k: np.concatenate([p[k] for p in parts])[lo : lo + count] for k in parts[0]}


def _block(dom: int, seed: int, block: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, dom, block]))
    domain = DOMAINS[dom]
    pitchyaw = _sample_gaze(rng, BLOCK, domain)  # (B, 2)
    p = _sample_scene(rng, BLOCK, domain)
    gaze = vector_from_pitchyaw(pitchyaw)  # (B, 3)
    img, pupil = _render(p, gaze)  # (B, 35, 55) float in ~[0, 1], (B, 2)
    if domain != "synthetic":
        img = _APPEARANCE[domain](rng, img, p)
    else:
        # Rendered skin and sclera are not perfectly flat (UnityEyes has pore-level texture).
        # The texture also gives a refiner local detail to turn into sensor-like noise: with
        # perfectly flat regions it can only invent periodic patterns (seen: stripes ringing
        # off the eyelids), since a convolution of a constant is a constant.
        fine = gaussian_filter(rng.normal(0.0, 1.0, img.shape).astype(_F), sigma=(0, 0.5, 0.5))
        img = img * (1.0 + 0.03 * fine)
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return {"image": image, "gaze": gaze, "pitchyaw": pitchyaw, "pupil": pupil}


# Gaze of the real domains, (mean, sd) in degrees of pitch and yaw: real people mostly look
# near the camera; a webcam above a screen sees eyes looking down; an eye tracker in a car
# sees a wider spread.
_REAL_GAZE = {
    "real": ((-5.0, 10.0), (0.0, 15.0)),
    "real-lit": ((-10.0, 8.0), (5.0, 14.0)),
    "real-ir": ((0.0, 12.0), (-3.0, 18.0)),
}


def _sample_gaze(rng: np.random.Generator, n: int, domain: str) -> np.ndarray:
    if domain in _REAL_GAZE:
        (pm, ps), (ym, ys) = _REAL_GAZE[domain]
        pitch = np.clip(rng.normal(np.radians(pm), np.radians(ps), n), -_PITCH_LIMIT, _PITCH_LIMIT)
        yaw = np.clip(rng.normal(np.radians(ym), np.radians(ys), n), -_YAW_LIMIT, _YAW_LIMIT)
    else:
        pitch = rng.uniform(-_PITCH_LIMIT, _PITCH_LIMIT, n)
        yaw = rng.uniform(-_YAW_LIMIT, _YAW_LIMIT, n)
    return np.stack([pitch, yaw], axis=1).astype(_F)  # (n, 2)


def _sample_scene(rng: np.random.Generator, n: int, domain: str) -> dict[str, np.ndarray]:
    """Per-sample scene parameters, each (n, 1, 1) float32 so they broadcast over the image."""

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n)

    s = u(0.9, 1.1)
    p = {
        # Geometry: identical distributions in both domains.
        "cx": 27.0 + u(-1.5, 1.5),
        "cy": 17.0 + u(-1.5, 1.5),
        "s": s,
        "half_w": 19.5 * s * u(0.95, 1.05),
        "up": s * u(4.5, 9.0),  # eyelid opening above / below the corner line
        "lo": s * u(3.0, 6.0),
        "tilt": u(-1.5, 1.5),
        "skew": u(0.0, 0.35),
        "ex": u(-1.0, 1.0),  # eyeball centre relative to the opening centre
        "ey": u(0.0, 1.0),
        "radius": 12.0 * s * u(0.95, 1.05),
        "r_iris": s * u(5.6, 6.8),
        "pupil_frac": u(0.3, 0.5),
        "iris_phase": u(0.0, 2.0 * np.pi),
        "glint_dx": s * u(-1.5, 1.5),
        "glint_dy": s * u(-2.0, -0.5),
        "crease": s * u(4.0, 6.0),
    }
    # Appearance: flat, bright and clean for synthetic; duller, darker, softer for real; in
    # the infrared, skin and sclera are alike, the iris is light and the pupil black.
    if domain == "real":
        p |= {
            "skin": u(0.35, 0.6),
            "sclera": u(0.55, 0.8),
            "iris": u(0.12, 0.4),
            "pupil": u(0.03, 0.1),
            "glint": u(0.6, 1.0),
            "edge": u(0.7, 1.2),  # soft iris/pupil edge width, px
            "lash": u(0.3, 0.6),
        }
    elif domain == "real-lit":
        p |= {
            "skin": u(0.45, 0.75),
            "sclera": u(0.7, 0.9),
            "iris": u(0.15, 0.45),
            "pupil": u(0.02, 0.08),
            "glint": u(0.7, 1.0),
            "edge": u(0.45, 0.8),
            "lash": u(0.35, 0.6),
        }
    elif domain == "real-ir":
        p |= {
            "skin": u(0.55, 0.8),
            "sclera": u(0.6, 0.85),
            "iris": u(0.35, 0.6),
            "pupil": u(0.0, 0.04),
            "glint": np.ones(n),
            "edge": u(0.35, 0.6),
            "lash": u(0.5, 0.8),
            "iris_texture": u(0.15, 0.3),  # crypts show in the near infrared
            "glint2_dx": s * u(2.0, 3.5),  # a second illuminator beside the first
        }
    else:
        p |= {
            "skin": u(0.5, 0.8),
            "sclera": u(0.8, 0.95),
            "iris": u(0.2, 0.55),
            "pupil": u(0.02, 0.06),
            "glint": np.ones(n),
            "edge": np.full(n, 0.35),
            "lash": u(0.4, 0.6),
        }
    return {k: v.astype(_F).reshape(n, 1, 1) for k, v in p.items()}


def _render(p: dict[str, np.ndarray], gaze: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scene parameters + (N, 3) gaze -> (N, 35, 55) float32 image, (N, 2) pupil centre."""
    n = gaze.shape[0]
    gx, gy, gz = (gaze[:, i].astype(_F).reshape(n, 1, 1) for i in range(3))
    cx, cy = p["cx"], p["cy"]

    # Pupil centre: orthographic projection of the point R along the gaze from the eyeball centre.
    px = cx + p["ex"] + p["radius"] * gx  # (N, 1, 1)
    py = cy + p["ey"] + p["radius"] * gy
    dpy = py - cy  # vertical gaze offset in px: the lids follow it

    # Almond opening between two lids; h < 0 beyond the corners closes the eye there.
    t = (_X - cx) / p["half_w"]  # (N, 1, 55)
    base = 1.0 - t * t
    line = cy + p["tilt"] * t
    inner = np.maximum(base, 0.0)
    y_up = line - p["up"] * base * (1.0 + p["skew"] * t) + 0.5 * dpy * inner  # (N, 1, 55)
    y_lo = line + p["lo"] * base * (1.0 - 0.5 * p["skew"] * t) + 0.25 * dpy * inner
    aa = _F(0.35)  # anti-aliasing width of the lid edges, px
    opening = expit((_Y - y_up) / aa) * expit((y_lo - _Y) / aa)  # (N, 35, 55)

    # Skin with a crease shadow above the upper lid and a soft line below the lower lid.
    y_crease = y_up - p["crease"] * inner - 0.5
    crease = np.exp(-np.square((_Y - y_crease) / 2.0)) * inner
    under = np.exp(-np.square((_Y - y_lo - 1.2) / 1.0)) * inner
    skin = p["skin"] * (1.0 - 0.1 * crease - 0.08 * under)

    # Iris as a disc perpendicular to the gaze: in image space it is an ellipse, squashed along
    # (gx, gy) by |gz|. rho is the distance from the centre measured in the disc's own plane.
    dx = _X - px  # (N, 1, 55)
    dy = _Y - py  # (N, 35, 1)
    rho = np.sqrt(dx * dx + dy * dy + np.square(dx * gx + dy * gy) / (gz * gz))  # (N, 35, 55)
    edge = p["edge"]
    r_iris = p["r_iris"]
    a_iris = expit((r_iris - rho) / edge)
    a_pupil = expit((r_iris * p["pupil_frac"] - rho) / edge)
    theta = np.arctan2(dy, dx)
    iris = (
        p["iris"]
        * (0.8 + 0.35 * rho / r_iris)
        * (1.0 + p.get("iris_texture", _F(0.08)) * np.cos(9.0 * theta + p["iris_phase"]))
    )
    iris = iris * (1.0 - 0.35 * expit((rho - 0.85 * r_iris) / 0.5))  # darker limbus ring

    sclera = p["sclera"] * (1.0 - 0.2 * t * t)  # darker towards the corners
    eye = sclera + (iris - sclera) * a_iris
    eye = eye + (p["pupil"] - eye) * a_pupil
    # The upper lid shades the top of the eyeball.
    eye = eye * (1.0 - 0.3 * np.exp(-np.maximum(_Y - y_up, 0.0) / 1.5))
    # The glint sits on the cornea, between the eyeball centre and the pupil, offset by the light.
    glx = cx + p["ex"] + 0.5 * p["radius"] * gx + p["glint_dx"]
    gly = cy + p["ey"] + 0.5 * p["radius"] * gy + p["glint_dy"]
    glint = np.exp(-(np.square(_X - glx) + np.square(_Y - gly)) / (2.0 * 0.55**2))
    if "glint2_dx" in p:
        glx2 = glx + p["glint2_dx"]
        glint = np.maximum(glint, np.exp(-(np.square(_X - glx2) + np.square(_Y - gly)) / 0.5))
    eye = eye + (p["glint"] - eye) * glint

    img = skin + (eye - skin) * opening
    # Eyelash line along the upper lid, heavier towards the outer corner.
    lash = np.exp(-np.square((_Y - y_up + 0.4) / 0.9)) * np.clip(base * 3.0, 0.0, 1.0)
    img = img * (1.0 - p["lash"] * (0.8 + 0.2 * t) * lash)

    pupil = np.stack([px.reshape(n), py.reshape(n)], axis=1)  # (N, 2)
    p["opening"] = opening.astype(_F)  # for appearance models that shade by shape
    return img.astype(_F), pupil.astype(_F)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation from n_in control points spanning the output."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    return np.stack([np.interp(pos, np.arange(n_in), np.eye(n_in)[i]) for i in range(n_in)], 1)


_UP_H = _interp_matrix(_H, 5).astype(_F)  # (35, 5)
_UP_W = _interp_matrix(_W, 7).astype(_F)  # (55, 7)


def _blur_matrices(sigma: np.ndarray, size: int) -> np.ndarray:
    """(N,) per-sample Gaussian sigmas -> (N, size, size) row-normalised blur matrices."""
    i = np.arange(size, dtype=_F)
    d2 = np.square(i[:, None] - i[None, :])  # (size, size)
    k = np.exp(-d2[None] / (2.0 * np.square(sigma.reshape(-1, 1, 1))))
    return (k / k.sum(axis=2, keepdims=True)).astype(_F)


def _real_appearance(
    rng: np.random.Generator, img: np.ndarray, p: dict[str, np.ndarray]
) -> np.ndarray:
    """Texture, light, optics and sensor of the "real" domain; geometry is left alone."""
    n = img.shape[0]

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n).astype(_F).reshape(n, 1, 1)

    # Skin texture: low-frequency blotches everywhere plus fine pores, both multiplicative.
    coarse = rng.normal(0.0, 1.0, (n, 5, 7)).astype(_F)
    blotch = _UP_H @ coarse @ _UP_W.T  # (N, 35, 55)
    fine = gaussian_filter(rng.normal(0.0, 1.0, img.shape).astype(_F), sigma=(0, 0.7, 0.7))
    img = img * (1.0 + u(0.04, 0.1) * blotch + u(0.03, 0.08) * fine)

    # Illumination: a linear ramp in a random direction (light from one side of the face).
    ang = u(0.0, 2.0 * np.pi)
    ramp = (np.cos(ang) * (_X - _W / 2) + np.sin(ang) * (_Y - _H / 2)) / (_W / 2)
    img = img * np.maximum(1.0 + u(0.15, 0.45) * ramp, 0.2)

    # Optics: per-sample Gaussian blur as two batched matrix products.
    sigma = rng.uniform(0.5, 1.1, n).astype(_F)
    img = _blur_matrices(sigma, _H) @ img @ _blur_matrices(sigma, _W).transpose(0, 2, 1)

    # Camera response: gamma, then contrast around mid-grey and a brightness offset.
    img = np.power(np.clip(img, 0.0, None), u(0.7, 1.4))
    img = 0.5 + u(0.7, 1.1) * (img - 0.5) + u(-0.08, 0.08)

    # Sensor: shot noise (variance proportional to signal) plus read noise.
    shot = np.sqrt(np.clip(img, 0.0, None) * u(0.0002, 0.001))
    read = u(0.005, 0.02)
    img = img + rng.normal(0.0, 1.0, img.shape).astype(_F) * (shot + read)
    return img.astype(_F)


def _disc_kernels(radius: np.ndarray, length: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """(N,) defocus radii, motion lengths (px) and directions -> (N, 9, 9) blur kernels.

    A disc of the given radius (anti-aliased edge) swept along a line: defocus and camera
    shake together, unlike the Gaussian optics of the ``real`` domain.
    """
    offsets = np.linspace(-0.5, 0.5, 7, dtype=_F)  # positions along the sweep
    i = np.arange(-4, 5, dtype=_F)
    ky, kx = i.reshape(1, 1, 9, 1), i.reshape(1, 1, 1, 9)
    r, ln, a = (v.astype(_F).reshape(-1, 1, 1, 1) for v in (radius, length, angle))
    cx = offsets.reshape(1, -1, 1, 1) * ln * np.cos(a)  # (N, 7, 1, 1)
    cy = offsets.reshape(1, -1, 1, 1) * ln * np.sin(a)
    dist = np.sqrt(np.square(kx - cx) + np.square(ky - cy))  # (N, 7, 9, 9)
    k = np.clip(r + 0.5 - dist, 0.0, 1.0).sum(axis=1)  # (N, 9, 9)
    return (k / k.sum(axis=(1, 2), keepdims=True)).astype(_F)


def _convolve(img: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Per-image 2-D convolution, reflect-padded: (N, H, W) x (N, k, k) -> (N, H, W)."""
    n, h, w = img.shape
    r = kernels.shape[1] // 2
    padded = np.pad(img, ((0, 0), (r, r), (r, r)), mode="reflect")  # (N, H + 2r, W + 2r)
    shape = padded.shape[1:]
    spectrum = np.fft.rfft2(padded) * np.fft.rfft2(kernels, s=shape)
    out = np.fft.irfft2(spectrum, s=shape)  # circular, shifted by r: crop the valid window
    return out[:, 2 * r : 2 * r + h, 2 * r : 2 * r + w].astype(_F)


def _lit_appearance(
    rng: np.random.Generator, img: np.ndarray, p: dict[str, np.ndarray]
) -> np.ndarray:
    """The ``real-lit`` domain: a directional light on a curved face, blur, low-light noise."""
    n = img.shape[0]
    opening = p["opening"]  # (N, 35, 55): 1 where the lids are open

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n).astype(_F).reshape(n, 1, 1)

    # Shape for shading, in px: a face curving away to the sides, the eyeball bulging where
    # the lids open, a brow ridge above. Normals come from the height field's gradient.
    bx, by = p["cx"] + p["ex"], p["cy"] + p["ey"]
    d2 = np.square(_X - bx) + np.square(_Y - by)
    ball = np.sqrt(np.maximum(np.square(p["radius"]) - d2, 0.0)) - 0.7 * p["radius"]
    height = (
        -np.square(_X - _W / 2) / (2.5 * _W)
        + 0.5 * np.maximum(ball, 0.0) * gaussian_filter(opening, sigma=(0, 1.0, 1.0))
        + u(2.0, 5.0) * np.exp(-np.square((_Y - u(-2.0, 4.0)) / 4.0))
    )  # (N, 35, 55)
    hy, hx = np.gradient(height, axis=(1, 2))
    norm = np.sqrt(1.0 + hx * hx + hy * hy)
    azimuth, elevation = u(0.0, 2.0 * np.pi), u(np.radians(25.0), np.radians(65.0))
    lx, ly = np.cos(azimuth) * np.cos(elevation), np.sin(azimuth) * np.cos(elevation)
    lz = np.sin(elevation)
    lambert = np.maximum((-hx * lx - hy * ly + lz) / norm, 0.0)
    ambient = u(0.2, 0.45)
    # The brow casts a soft shadow over the top rows when the light comes from above (ly < 0).
    edge = u(2.0, 9.0)
    shadow = 1.0 - u(0.2, 0.6) * np.clip(-ly * 2.0, 0.0, 1.0) * expit((edge - _Y) / 1.5)
    img = img * (ambient + (1.0 - ambient) * lambert) * shadow

    # Optics: defocus and shake.
    kernels = _disc_kernels(
        rng.uniform(0.3, 1.3, n), rng.uniform(0.0, 3.0, n), rng.uniform(0.0, np.pi, n)
    )
    img = _convolve(img, kernels)

    # Auto-exposure: the brightest tenth of the frame is put near the top of the range.
    bright = np.percentile(img, 90, axis=(1, 2), keepdims=True)
    img = img * (u(0.6, 0.85) / np.maximum(bright, 1e-3))

    # Low light: few photons per grey level, so shot noise dominates; rows read out with an
    # offset each (banding), plus read noise; then the camera's gamma encoding.
    photons = u(200.0, 800.0)
    img = rng.poisson(np.clip(img, 0.0, None) * photons).astype(_F) / photons
    img = img + rng.normal(0.0, 1.0, (n, _H, 1)).astype(_F) * u(0.004, 0.012)
    img = img + rng.normal(0.0, 1.0, img.shape).astype(_F) * u(0.005, 0.015)
    return np.power(np.clip(img, 0.0, None), u(0.8, 1.0)).astype(_F)


def _jpeg(images: np.ndarray, quality: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Each (H, W) image in [0, 1] through JPEG at twice its size, as if cut from a compressed
    frame: blocks are 4x4 eye pixels at a random phase, then downsampled back."""
    from io import BytesIO

    from PIL import Image

    out = np.empty_like(images)
    for i, img in enumerate(images):
        big = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)  # (2H, 2W)
        dy, dx = int(phase[i, 0]), int(phase[i, 1])
        big = np.pad(big, ((dy, 0), (dx, 0)), mode="edge")
        pixels = np.clip(np.rint(big * 255.0), 0, 255).astype(np.uint8)
        buffer = BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(quality[i]))
        decoded = np.asarray(Image.open(buffer), dtype=_F)[dy:, dx:] / 255.0  # (2H, 2W)
        out[i] = decoded.reshape(_H, 2, _W, 2).mean(axis=(1, 3))
    return out


def _ir_appearance(
    rng: np.random.Generator, img: np.ndarray, p: dict[str, np.ndarray]
) -> np.ndarray:
    """The ``real-ir`` domain: smooth skin, illuminator fall-off, mild noise, JPEG."""
    n = img.shape[0]

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n).astype(_F).reshape(n, 1, 1)

    # Light scattered under the skin smooths it: faint, broad shading only.
    coarse = rng.normal(0.0, 1.0, (n, 5, 7)).astype(_F)
    img = img * (1.0 + u(0.01, 0.04) * (_UP_H @ coarse @ _UP_W.T))

    # The illuminator beside the camera: bright in the middle, falling off radially.
    fx, fy = u(15.0, 40.0), u(8.0, 27.0)
    r2 = (np.square(_X - fx) + np.square(_Y - fy)) / (_W / 2) ** 2
    img = img * (1.0 - u(0.15, 0.45) * np.minimum(r2, 1.5)) * u(0.85, 1.15)

    sigma = rng.uniform(0.3, 0.7, n).astype(_F)
    img = _blur_matrices(sigma, _H) @ img @ _blur_matrices(sigma, _W).transpose(0, 2, 1)
    img = img + rng.normal(0.0, 1.0, img.shape).astype(_F) * u(0.008, 0.02)
    img = _jpeg(np.clip(img, 0.0, 1.0), rng.integers(15, 46, n), rng.integers(0, 8, (n, 2)))
    return img.astype(_F)


_APPEARANCE = {
    "real": _real_appearance,
    "real-lit": _lit_appearance,
    "real-ir": _ir_appearance,
}


def _grid_png(path: str, per_domain: int = 8, seed: int = 0, zoom: int = 4) -> None:
    from PIL import Image, ImageDraw

    rows = []
    marks = []
    for domain in DOMAINS:
        s = generate(domain, per_domain, seed)
        rows.append(np.concatenate(list(s["image"]), axis=1))  # (35, 55 * per_domain)
        marks.append(s["pupil"])
    grid = np.concatenate(rows + rows, axis=0)  # second copy gets pupil labels drawn on it
    im = Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST)
    im = im.convert("RGB")
    draw = ImageDraw.Draw(im)
    for r, pupils in enumerate(marks):
        for c, (x, y) in enumerate(pupils):
            # Pixel centre (x, y) is at zoom * (x + 0.5) in the upscaled image.
            zx = (c * _W + x + 0.5) * zoom
            zy = ((len(DOMAINS) + r) * _H + y + 0.5) * zoom
            draw.ellipse([zx - 2, zy - 2, zx + 2, zy + 2], fill=(255, 0, 0))
    im.save(path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m shards.sim.eyes OUT.png")
    _grid_png(sys.argv[1])
