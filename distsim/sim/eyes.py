"""Built-in procedural eye simulator: 35x55 greyscale eyes with exact gaze and pupil labels.

Two domains share one renderer (same geometry, same label semantics):

- ``"synthetic"``: clean, flat-shaded, idealised renders (the role UnityEyes plays in the
  paper), gaze pitch ~ U(-25, 25) deg, yaw ~ U(-35, 35) deg.
- ``"real"``: the same scenes with a different *appearance* (the role of MPIIGaze): duller and
  darker materials, softer iris edge, skin texture, an illumination gradient, blur, gamma and
  contrast changes, shot + read noise. Gaze pitch ~ N(-5, 10) deg, yaw ~ N(0, 15) deg (clipped
  to the synthetic range). Its labels exist for evaluation only.

Gaze labels follow ``shards.gaze`` (MPIIGaze camera coordinates). The pupil centre is rendered
at ``eyeball_centre + R * (x, y)`` of the gaze vector, so positive yaw moves the pupil left
and positive pitch moves it up in the image. The ``pupil`` label is that geometric centre in
pixels (x right, y down, pixel centres at integer coordinates), also when an eyelid hides part
of the pupil.

Every sample depends only on ``(domain, seed, index)``: the stream is cut into blocks of
``BLOCK`` samples and each block draws from its own ``SeedSequence([seed, domain, block])``.

Run ``python -m distsim.sim.eyes OUT.png`` to write a grid of samples to look at.
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import expit

from shards.gaze import vector_from_pitchyaw

__all__ = ["DOMAINS", "IMAGE_SHAPE", "SIM_VERSION", "generate"]

IMAGE_SHAPE = (35, 55)
DOMAINS = ("synthetic", "real")
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
    real = DOMAINS[dom] == "real"
    pitchyaw = _sample_gaze(rng, BLOCK, real)  # (B, 2)
    p = _sample_scene(rng, BLOCK, real)
    gaze = vector_from_pitchyaw(pitchyaw)  # (B, 3)
    img, pupil = _render(p, gaze)  # (B, 35, 55) float in ~[0, 1], (B, 2)
    if real:
        img = _real_appearance(rng, img, p)
    else:
        # Rendered skin and sclera are not perfectly flat (UnityEyes has pore-level texture).
        # The texture also gives a refiner local detail to turn into sensor-like noise: with
        # perfectly flat regions it can only invent periodic patterns (seen: stripes ringing
        # off the eyelids), since a convolution of a constant is a constant.
        fine = gaussian_filter(rng.normal(0.0, 1.0, img.shape).astype(_F), sigma=(0, 0.5, 0.5))
        img = img * (1.0 + 0.03 * fine)
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return {"image": image, "gaze": gaze, "pitchyaw": pitchyaw, "pupil": pupil}


def _sample_gaze(rng: np.random.Generator, n: int, real: bool) -> np.ndarray:
    if real:
        # Real people mostly look near the camera, a little downwards.
        pitch = np.clip(
            rng.normal(np.radians(-5.0), np.radians(10.0), n), -_PITCH_LIMIT, _PITCH_LIMIT
        )
        yaw = np.clip(rng.normal(0.0, np.radians(15.0), n), -_YAW_LIMIT, _YAW_LIMIT)
    else:
        pitch = rng.uniform(-_PITCH_LIMIT, _PITCH_LIMIT, n)
        yaw = rng.uniform(-_YAW_LIMIT, _YAW_LIMIT, n)
    return np.stack([pitch, yaw], axis=1).astype(_F)  # (n, 2)


def _sample_scene(rng: np.random.Generator, n: int, real: bool) -> dict[str, np.ndarray]:
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
    # Appearance: flat, bright and clean for synthetic; duller, darker, softer for real.
    if real:
        p |= {
            "skin": u(0.35, 0.6),
            "sclera": u(0.55, 0.8),
            "iris": u(0.12, 0.4),
            "pupil": u(0.03, 0.1),
            "glint": u(0.6, 1.0),
            "edge": u(0.7, 1.2),  # soft iris/pupil edge width, px
            "lash": u(0.3, 0.6),
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
        * (1.0 + 0.08 * np.cos(9.0 * theta + p["iris_phase"]))
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
    eye = eye + (p["glint"] - eye) * glint

    img = skin + (eye - skin) * opening
    # Eyelash line along the upper lid, heavier towards the outer corner.
    lash = np.exp(-np.square((_Y - y_up + 0.4) / 0.9)) * np.clip(base * 3.0, 0.0, 1.0)
    img = img * (1.0 - p["lash"] * (0.8 + 0.2 * t) * lash)

    pupil = np.stack([px.reshape(n), py.reshape(n)], axis=1)  # (N, 2)
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
        raise SystemExit("usage: python -m distsim.sim.eyes OUT.png")
    _grid_png(sys.argv[1])
