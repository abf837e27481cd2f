"""The synthetic anomaly world: procedurally rendered videos with injected anomalies and exact ground truth.

This is the project's built-in default data (no downloads): every recipe, test and demo can run on it. Each video is a
small 2-D scene - a sky and textured ground, one to four moving objects (balls that roll or bounce, sliding boxes,
crates, cars), optionally a walking stick figure and a sign with a word - and about half of the videos get one or two
anomalies of the five categories of the paper's taxonomy (Sec. 3.1, App. B.1.2):

* Object Distortion - an object is stretched, skewed, notched or melts into a puddle (and, only where named in
  ``kinds``, its surface breaks into a blocky checkerboard: ``glitch``, :data:`OPT_IN_KINDS`);
* Human Distortion - the figure grows an extra arm or leg, a knee bends backwards, an arm is far too long, or the
  upper body splits from the hips;
* Motion Anomalies - an entity vanishes, teleports and comes back, jitters, flickers, or a copy of it pops up;
* Physical Violations - an object or the figure floats unsupported, sinks into the solid ground, or a ball rolls
  through a crate it should bounce off;
* Character Anomalies - the sign's letters change, turn into unreadable glyphs, or jump out of line.

Every anomaly is a change relative to the clean scene: :func:`render` draws a scene at a time with or without any set
of :class:`Defect`, so the ground truth is *measured*, not guessed. For an anomaly with window ``[s, e]`` on the 4 fps
sequence (frame ``j`` is the source frame on screen at time ``j / 4``, :mod:`cac_align.video`):

* the defect changes exactly the source frames whose time lies in ``[s / 4, (e + 1) / 4)`` - each of them differs from
  the clean render (a defect that some frame would not show, e.g. behind another object, is re-sampled);
* the box of frame ``j`` is the tight bounding box of the pixels where the defect render differs from the clean
  render at ``j / 4``, in Qwen's 0-1000 coordinates (pixel ``[x0, x1]`` -> ``floor(1000 x0 / W)``,
  ``ceil(1000 (x1 + 1) / W)``). A teleport, or a ball rolling through a crate, changes two separate places - where
  the entity is and where it should be - and gets one tight box per place (parts at least 4 % of the width or height
  apart; App. B.1.3 allows several boxes per instance). Departure from App. B.1.3: for a disappearance the paper boxes the last frame on which the
  entity is visible; our ground truth is exact, so the box marks where the entity should be on every frame it is
  missing.

Difficulty (CaC-Bench-Hard, App. A.1): each abnormal video targets a duration group (< 1 s: windows of 1-3 frames at
4 fps; >= 1 s: 4-12 frames) and an area group (< 20 % / >= 20 %, rules of :mod:`cac_align.data.difficulty`); the
sampler picks entity, kind and magnitude and re-draws (up to 12 tries) until the measured video falls in its target
group, so all four groups occur (a short second anomaly stays inside the first one's window). Some kinds are small by
nature (extra limbs, letters) and land in the < 20 % groups. Saliency (Eq. 6's discount) follows a rule on the
measured anomaly instead of the paper's verification rounds: an anomaly is **non-salient** when its contrast (mean
over the window's source frames of the mean change of the changed pixels, max over RGB, in [0, 1]) is below 0.25, or
when it is both short (< 1 s) and small (area < 3 %); otherwise salient.

Layout of ``OUT``: ``videos/000012.mp4`` (H.264, default 160x96, 16 fps, 4 s), ``manifest.jsonl`` (one
:class:`~cac_align.schema.Annotation` per video, video paths relative to ``OUT``) and ``world.json`` (the generation
parameters). Video ``i`` is sampled from ``numpy.random.default_rng([seed, i])`` alone, and videos come in pairs
``(2k, 2k + 1)`` of which one is normal, so re-running skips existing videos without changing the others. The frame
rate must be a multiple of 4 so that every 4 fps frame is a source frame. Text uses Pillow's bundled font
(``ImageFont.load_default(size=...)``, Pillow >= 10.1).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cac_align.data.difficulty import HARD_SPLITS, anomaly_area, anomaly_duration, hard_split, split_name
from cac_align.schema import TAXONOMY, Annotation, AnomalySpan, Box, read_manifest, write_manifest
from cac_align.utils import atomic_write_json
from cac_align.video import TURN1_FPS

WORLD_VERSION = 1
ANNOTATION_FPS = TURN1_FPS
NONSALIENT_CONTRAST = 0.25
NONSALIENT_SMALL_AREA = 0.03
_EPS = 1e-6
_TRIES = 12  # defect re-samples until the measured area group matches its target

RGB = tuple[int, int, int]

PALETTE: dict[str, RGB] = {
    "red": (214, 48, 49),
    "orange": (235, 130, 30),
    "yellow": (245, 205, 20),
    "green": (30, 160, 70),
    "blue": (40, 90, 230),
    "purple": (140, 60, 175),
    "pink": (235, 90, 160),
    "white": (245, 245, 245),
    "black": (25, 25, 30),
    "brown": (125, 80, 45),
    "gray": (128, 132, 138),
    "cyan": (20, 190, 215),
}
SKIES: dict[str, tuple[RGB, RGB]] = {
    "a clear blue sky": ((60, 120, 225), (175, 210, 250)),
    "a sunset sky": ((235, 105, 70), (255, 205, 140)),
    "an overcast sky": ((140, 146, 156), (205, 208, 214)),
    "a dusky sky": ((35, 35, 85), (125, 95, 145)),
}
GROUNDS: dict[str, RGB] = {
    "grass": (80, 150, 60),
    "sand": (220, 195, 140),
    "a paved road": (95, 97, 102),
    "snow": (232, 236, 242),
    "dirt": (140, 100, 62),
}
WORDS = ("OPEN", "STOP", "CAFE", "EXIT", "PARK", "HOTEL", "BANK", "SALE", "TAXI", "SHOP", "BAKERY", "BUS", "ZOO")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SYMBOLS = "#%&@$?*"

# --------------------------------------------------------------------------------------------------------------------
# Scene model
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mover:
    """A ball, box, crate or car moving along its ground lane (pixels; ``lane`` is the y of its ground contact).

    Horizontal motion is ``x0 + vx t``, reflected between ``lo`` and ``hi`` when ``reflect`` (balls bounce off the
    frame edges or a crate). ``bounce > 0`` makes a ball hop ``bounce * |sin(pi bounce_hz t + phase)|`` pixels high.
    ``size`` is a half width (radius for balls) and ``height`` the full height.
    """

    kind: str
    color: str
    rgb: RGB
    detail: RGB
    size: float
    height: float
    lane: float
    x0: float
    vx: float
    reflect: bool = False
    lo: float = 0.0
    hi: float = 0.0
    bounce: float = 0.0
    bounce_hz: float = 0.0
    phase: float = 0.0
    order: int = 1

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}" if self.kind != "crate" else "wooden crate"

    @property
    def grounded(self) -> bool:
        return self.bounce == 0.0


@dataclass(frozen=True)
class Figure:
    """A walking stick figure ``height`` pixels tall whose feet touch ``lane``; ``vx`` pixels per second."""

    height: float
    lane: float
    x0: float
    vx: float
    stride_hz: float
    phase: float
    shirt: str
    shirt_rgb: RGB
    pants_rgb: RGB
    skin_rgb: RGB
    width: int

    name = "person"


@dataclass(frozen=True)
class Sign:
    """A static sign on a post: the board's centre x, the post's foot ``lane``, board size and the word it shows."""

    word: str
    x: float
    lane: float
    board_w: float
    board_h: float
    post_h: float
    font_size: int
    board_rgb: RGB
    text_rgb: RGB
    post_rgb: RGB

    name = "sign"


@dataclass(frozen=True, eq=False)
class Scene:
    """Everything needed to draw a clean video: size, timing, static background and the entities."""

    width: int
    height: int
    seconds: float
    fps: float
    sky: str
    ground: str
    horizon: int
    background: np.ndarray
    movers: tuple[Mover, ...]
    figure: Figure | None
    sign: Sign | None

    @property
    def num_frames(self) -> int:
        """Number of source frames."""
        return round(self.seconds * self.fps)

    @property
    def num_slots(self) -> int:
        """Number of frames of the 4 fps annotation sequence."""
        return math.ceil(self.num_frames / self.fps * ANNOTATION_FPS - _EPS)

    def entity(self, target: str) -> Mover | Figure | Sign:
        if target == "figure" and self.figure is not None:
            return self.figure
        if target == "sign" and self.sign is not None:
            return self.sign
        if target.startswith("mover") and int(target[5:]) < len(self.movers):
            return self.movers[int(target[5:])]
        raise ValueError(f"scene has no entity {target!r}")


@dataclass(frozen=True)
class Defect:
    """One injected anomaly: category ``label``, ``kind``, the entity it changes and its inclusive 4 fps window.

    ``params`` holds the kind's magnitudes; ``reason`` and ``region`` are the ground-truth strings.
    """

    label: str
    kind: str
    target: str
    window: tuple[int, int]
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    reason: str = ""
    region: str = ""

    def active(self, t: float) -> bool:
        """Whether the defect shows at time ``t`` (seconds): ``t`` lies in ``[s / 4, (e + 1) / 4)``."""
        return self.window[0] <= _slot(t) <= self.window[1]


@dataclass(eq=False)
class SynthVideo:
    """A sampled video: its clean scene, the injected defects (empty for a normal video) and its ground truth."""

    scene: Scene
    defects: tuple[Defect, ...]
    annotation: Annotation


def _slot(t: float) -> int:
    return math.floor(t * ANNOTATION_FPS + _EPS)


# --------------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------------


def render(scene: Scene, t: float, defects: Sequence[Defect] = ()) -> np.ndarray:
    """Draw ``scene`` at time ``t`` seconds with the given defects (those active at ``t``). Returns uint8 [H, W, 3]."""
    active = [d for d in defects if d.active(t)]
    img = Image.fromarray(scene.background)
    items: list[tuple[float, int, str]] = [(m.lane, m.order, f"mover{i}") for i, m in enumerate(scene.movers)]
    if scene.figure is not None:
        items.append((scene.figure.lane, 2, "figure"))
    if scene.sign is not None:
        items.append((scene.sign.lane, 0, "sign"))
    for _, _, target in sorted(items):
        mods = {d.kind: d for d in active if d.target == target}
        if target == "sign":
            _draw_sign(img, scene.sign, t, mods)
        elif target == "figure":
            _draw_figure(img, scene.figure, t, mods)
        else:
            _draw_mover(img, scene.entity(target), t, mods)
    return np.array(img)


def render_frames(scene: Scene, defects: Sequence[Defect] = ()) -> np.ndarray:
    """All source frames of the video, uint8 ``[F, H, W, 3]`` (frame ``k`` at time ``k / fps``)."""
    return np.stack([render(scene, k / scene.fps, defects) for k in range(scene.num_frames)])


@lru_cache(maxsize=8)
def _unit_circle(n: int) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(a), np.sin(a)], 1)


def _circle(cx: float, cy: float, r: float, n: int = 20) -> np.ndarray:
    return _unit_circle(n) * r + [cx, cy]


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _mover_x(m: Mover, t: float) -> float:
    u = m.x0 + m.vx * t
    if not m.reflect:
        return u
    span = m.hi - m.lo
    p = (u - m.lo) % (2 * span)
    return m.lo + (p if p <= span else 2 * span - p)


def _mover_parts(m: Mover, x: float) -> list[tuple[RGB, np.ndarray]]:
    """Polygons of a mover in local coordinates: origin at its ground contact, y pointing down."""
    a, h = m.size, m.height
    if m.kind == "ball":
        ang = (x - m.x0) / max(a, 1.0)
        dot = _circle(0.5 * a * math.cos(ang), -a + 0.5 * a * math.sin(ang), 0.3 * a, 10)
        return [(m.rgb, _circle(0, -a, a)), (m.detail, dot)]
    if m.kind in ("box", "crate"):
        s = 0.09 * h
        return [
            (m.rgb, _rect(-a, -h, a, 0)),
            (m.detail, _rect(-a, -0.36 * h - s, a, -0.36 * h)),
            (m.detail, _rect(-a, -0.72 * h - s, a, -0.72 * h)),
        ]
    d = 1.0 if m.vx >= 0 else -1.0  # car, facing its direction of travel
    wr = 0.21 * h
    ang = (x - m.x0) / max(wr, 1.0)
    cabin = np.array([[-0.6 * a, -0.6 * h], [-0.38 * a, -h], [0.35 * a, -h], [0.6 * a, -0.6 * h]])
    window = np.array([[-0.45 * a, -0.64 * h], [-0.32 * a, -0.9 * h], [0.28 * a, -0.9 * h], [0.45 * a, -0.64 * h]])
    parts: list[tuple[RGB, np.ndarray]] = [
        (m.rgb, _rect(-a, -0.62 * h, a, -0.22 * h)),
        (m.rgb, cabin * [d, 1]),
        (m.detail, window * [d, 1]),
    ]
    for wx in (-0.62 * a, 0.62 * a):
        parts.append(((35, 35, 38), _circle(wx, -wr, wr, 14)))
        parts.append(
            ((190, 190, 195), _circle(wx + 0.5 * wr * math.cos(ang), -wr + 0.5 * wr * math.sin(ang), 0.3 * wr, 8))
        )
    return parts


def _flicker(rgb: RGB, t: float, d: Defect) -> RGB:
    """Colours of a flickering entity: alternate 4 fps frames are inverted/darkened (subtle: +-strength)."""
    c = np.asarray(rgb, dtype=np.float64)
    odd = (_slot(t) - d.window[0]) % 2 == 1
    if d.params["subtle"]:
        f = d.params["strength"]
        c = c * (1 - f) if odd else c + (255 - c) * f
    else:
        c = c * 0.35 if odd else 255 - c
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))


def _offsets(d_motion: dict[str, Defect], t: float) -> list[tuple[float, float]]:
    """Where to draw an entity relative to its clean position: [] when it vanished, two places for a pop-up copy."""
    if "vanish" in d_motion:
        return []
    dx = dy = 0.0
    if "teleport" in d_motion:
        dx, dy = d_motion["teleport"].params["dx"], d_motion["teleport"].params["dy"]
    if "jitter" in d_motion:
        p = d_motion["jitter"].params
        ang = p["angles"][(_slot(t) - d_motion["jitter"].window[0]) % len(p["angles"])]
        dx, dy = dx + p["mag"] * math.cos(ang), dy + 0.6 * p["mag"] * math.sin(ang)
    if "hover" in d_motion:
        dy -= d_motion["hover"].params["lift"]
    if "sink" in d_motion:
        dy += d_motion["sink"].params["depth"]
    out = [(dx, dy)]
    if "duplicate" in d_motion:
        out.append((dx + d_motion["duplicate"].params["dx"], dy + d_motion["duplicate"].params["dy"]))
    return out


def _composite(img: Image.Image, layer: Image.Image) -> None:
    img.paste(layer, (0, 0), layer)


def _draw_mover(img: Image.Image, m: Mover, t: float, mods: dict[str, Defect]) -> None:
    x = _mover_x(m, t)
    if "through" in mods:  # keeps rolling past the crate face it should have bounced off at time tc
        p = mods["through"].params
        x = m.hi + abs(m.vx) * (t - p["tc"])
    y = m.lane - m.bounce * abs(math.sin(math.pi * m.bounce_hz * t + m.phase))
    parts = _mover_parts(m, x)
    a, h = m.size, m.height
    if "stretch" in mods:
        p = mods["stretch"].params
        parts = [(c, pts * [p["sx"], p["sy"]]) for c, pts in parts]
    if "shear" in mods:
        k = mods["shear"].params["k"]
        parts = [(c, np.stack([pts[:, 0] - k * a * pts[:, 1] / h, pts[:, 1]], 1)) for c, pts in parts]
    if "melt" in mods:
        p = mods["melt"].params
        puddle = np.array([[-p["w"] * a, 0], [-0.7 * a, -p["rise"] * h], [0.7 * a, -p["rise"] * h], [p["w"] * a, 0]])
        parts.append((m.rgb, puddle))
    if "flicker" in mods:
        parts = [(_flicker(c, t, mods["flicker"]), pts) for c, pts in parts]
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for dx, dy in _offsets(mods, t):
        for c, pts in parts:
            draw.polygon([(float(px), float(py)) for px, py in pts + [x + dx, y + dy]], fill=(*c, 255))
        if "notch" in mods:
            notch = np.asarray(mods["notch"].params["tri"]) * [a, h] + [x + dx, y + dy]
            draw.polygon([(float(px), float(py)) for px, py in notch], fill=(0, 0, 0, 0))
    if "sink" in mods:
        draw.rectangle((0, math.floor(m.lane) + 1, img.size[0], img.size[1]), fill=(0, 0, 0, 0))
    if "glitch" in mods:
        layer = _glitch(layer, mods["glitch"].params, x, y, h)
    _composite(img, layer)


def _glitch(layer: Image.Image, p: dict, x: float, y: float, h: float) -> Image.Image:
    """A mover's layer whose pixels in the band ``[lo, hi]`` of its height (from its base ``y``) alternate with
    ``p["rgb"]`` in square cells of ``p["cell"]`` pixels anchored to the mover, so the pattern moves with it."""
    arr = np.array(layer)
    yy, xx = np.mgrid[0 : arr.shape[0], 0 : arr.shape[1]]
    cell = p["cell"]
    checker = (np.floor((xx - x) / cell) + np.floor((yy - y) / cell)) % 2 == 0
    band = (yy >= y - p["hi"] * h) & (yy <= y - p["lo"] * h)
    arr[checker & band & (arr[..., 3] > 0), :3] = p["rgb"]
    return Image.fromarray(arr)


def _figure_joints(f: Figure, t: float) -> dict[str, Any]:
    """Joint positions of the walking figure in local coordinates (origin between the feet on the ground, y down)."""
    h, d = f.height, (1.0 if f.vx >= 0 else -1.0)
    thigh = shin = 0.245 * h
    upper, fore = 0.16 * h, 0.15 * h
    phi = 2 * math.pi * f.stride_hz * t + f.phase
    legs = {}
    for side, ph in (("L", phi), ("R", phi + math.pi)):
        a = 0.45 * math.sin(ph)
        b = 0.7 * max(0.0, math.sin(ph + 1.2))
        legs[side] = (a, b)
    drop = max(thigh * math.cos(a) + shin * math.cos(a - b) for a, b in legs.values())
    hip = np.array([0.0, -drop])
    neck = hip + [0.03 * h * d, -0.3 * h]
    arms = {}
    for side, ph in (("L", phi + math.pi), ("R", phi)):
        arms[side] = (0.4 * math.sin(ph), 0.35 + 0.3 * max(0.0, math.sin(ph)))
    return {"h": h, "d": d, "hip": hip, "neck": neck, "legs": legs, "arms": arms, "len": (thigh, shin, upper, fore)}


def _limb(root: np.ndarray, a: float, b: float, l1: float, l2: float, d: float) -> list[tuple[float, float]]:
    """A two-segment limb from ``root``: first segment at angle ``a`` from straight down (positive = forward), the
    second bent by ``b`` more."""
    mid = root + l1 * np.array([d * math.sin(a), math.cos(a)])
    end = mid + l2 * np.array([d * math.sin(a + b), math.cos(a + b)])
    return [tuple(root), tuple(mid), tuple(end)]


def _draw_figure(img: Image.Image, f: Figure, t: float, mods: dict[str, Defect]) -> None:
    j = _figure_joints(f, t)
    h, d = j["h"], j["d"]
    thigh, shin, upper, fore = j["len"]
    hip, neck = j["hip"], j["neck"]
    shirt, pants, skin = f.shirt_rgb, f.pants_rgb, f.skin_rgb
    if "flicker" in mods:
        shirt, pants, skin = (_flicker(c, t, mods["flicker"]) for c in (shirt, pants, skin))
    far_pants = tuple(int(c * 0.8) for c in pants)
    up = np.zeros(2)  # offset of everything above the hips (body split)
    if "split" in mods:
        up = np.array([mods["split"].params["dx"], -mods["split"].params["dy"]])
    strokes: list[tuple[RGB, list[tuple[float, float]], int]] = []
    for side in ("R", "L"):
        a, b = j["legs"][side]
        if "backward_knee" in mods and mods["backward_knee"].params["side"] == side:
            b = -mods["backward_knee"].params["bend"]
        strokes.append((far_pants if side == "R" else pants, _limb(hip, a, -b, thigh, shin, d), f.width))
    if "extra_leg" in mods:
        p = mods["extra_leg"].params
        strokes.append((pants, _limb(hip, p["angle"], p["bend"], thigh, shin, d), f.width))
    mid = hip + (neck - hip) * 0.5
    if "split" in mods:
        strokes.append((shirt, [tuple(hip), tuple(mid)], f.width + 1))
        strokes.append((shirt, [tuple(mid + up), tuple(neck + up)], f.width + 1))
    else:
        strokes.append((shirt, [tuple(hip), tuple(neck)], f.width + 1))
    shoulder = neck + [0, 0.03 * h] + up
    for side in ("R", "L"):
        a, b = j["arms"][side]
        s = 1.0
        if "long_arm" in mods and mods["long_arm"].params["side"] == side:
            s = mods["long_arm"].params["scale"]
        strokes.append((shirt, _limb(shoulder, a, b, s * upper, s * fore, d), f.width))
    if "extra_arm" in mods:
        p = mods["extra_arm"].params
        strokes.append((shirt, _limb(shoulder, p["angle"], p["bend"], upper, fore, d), f.width))
    head_r = 0.085 * h
    head_c = neck + up + [0, -1.05 * head_r]
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    x = f.x0 + f.vx * t
    for dx, dy in _offsets(mods, t):
        o = np.array([x + dx, f.lane + dy])
        for c, pts, w in strokes:
            draw.line([(px + o[0], py + o[1]) for px, py in pts], fill=(*c, 255), width=w, joint="curve")
            for px, py in pts:  # round joints and ends
                r = w / 2
                draw.ellipse((px + o[0] - r, py + o[1] - r, px + o[0] + r, py + o[1] + r), fill=(*c, 255))
        cx, cy = head_c + o
        draw.ellipse((cx - head_r, cy - head_r, cx + head_r, cy + head_r), fill=(*skin, 255))
    if "sink" in mods:
        draw.rectangle((0, math.floor(f.lane) + 1, img.size[0], img.size[1]), fill=(0, 0, 0, 0))
    _composite(img, layer)


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=2048)
def _glyph(size: int, ch: str, flip: bool) -> Image.Image:
    """An 'L' mask of one character at ``size`` (mirrored when ``flip``), its top-left at the text origin."""
    font = _font(size)
    x0, y0, x1, y1 = font.getbbox(ch)
    mask = Image.new("L", (max(x1, 1), max(y1, 1)), 0)
    ImageDraw.Draw(mask).text((0, 0), ch, fill=255, font=font)
    return mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else mask


def _sign_layout(s: Sign) -> tuple[float, float, list[float]]:
    """Board top-left and the x of each letter of the word (left edges, from the font's advances)."""
    bx, by = s.x - s.board_w / 2, s.lane - s.post_h - s.board_h
    font = _font(s.font_size)
    total = font.getlength(s.word)
    x_start = s.x - total / 2
    xs = [x_start + font.getlength(s.word[:i]) for i in range(len(s.word))]
    return bx, by, xs


def _draw_sign(img: Image.Image, s: Sign, t: float, mods: dict[str, Defect]) -> None:
    draw = ImageDraw.Draw(img)
    bx, by, xs = _sign_layout(s)
    pw = max(2.0, s.board_w * 0.06)
    board, text, post = s.board_rgb, s.text_rgb, s.post_rgb
    if "flicker" in mods:
        board, text, post = (_flicker(c, t, mods["flicker"]) for c in (board, text, post))
    if "vanish" in mods:
        return
    draw.rectangle((s.x - pw / 2, by + s.board_h, s.x + pw / 2, s.lane), fill=post)
    draw.rectangle((bx, by, bx + s.board_w, by + s.board_h), fill=board, outline=post, width=1)
    ty = by + (s.board_h - s.font_size) / 2 - 0.1 * s.font_size
    letters = list(s.word)
    dys = [0.0] * len(letters)
    flips = [False] * len(letters)
    scribbles: dict[int, list[list[float]]] = {}
    if "change" in mods:
        for i, c in mods["change"].params["letters"].items():
            letters[int(i)] = c
    if "garble" in mods:
        for i, g in mods["garble"].params["glyphs"].items():
            if g["type"] == "flip":
                flips[int(i)] = True
            elif g["type"] == "symbol":
                letters[int(i)] = g["char"]
            else:
                scribbles[int(i)] = g["lines"]
    if "layout" in mods:
        dys = [dy * s.font_size for dy in mods["layout"].params["dys"]]
    for i, ch in enumerate(letters):
        x, y = round(xs[i]), round(ty + dys[i])
        if i in scribbles:
            cw, chh = _font(s.font_size).getlength(s.word[i]), s.font_size
            for x0, y0, x1, y1 in scribbles[i]:
                draw.line(
                    (x + x0 * cw, y + y0 * chh, x + x1 * cw, y + y1 * chh), fill=text, width=max(1, s.font_size // 9)
                )
            continue
        draw.bitmap((x, y), _glyph(s.font_size, ch, flips[i]), fill=text)


# --------------------------------------------------------------------------------------------------------------------
# Scene sampling
# --------------------------------------------------------------------------------------------------------------------


def _jitter_rgb(rng: np.random.Generator, rgb: RGB, amount: int = 18) -> RGB:
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255))


def _pick_color(rng: np.random.Generator, avoid: Sequence[RGB]) -> tuple[str, RGB]:
    """A palette colour at a clear distance from the colours in ``avoid`` (ground, sky)."""
    names = list(PALETTE)
    rng.shuffle(names)
    for name in names:
        if all(np.abs(np.subtract(PALETTE[name], c)).sum() > 120 for c in avoid):
            return name, _jitter_rgb(rng, PALETTE[name])
    return names[0], PALETTE[names[0]]


def _background(rng: np.random.Generator, w: int, h: int, horizon: int, sky: str, ground: str) -> np.ndarray:
    top, bottom = (np.asarray(c, dtype=np.float64) for c in SKIES[sky])
    g = np.asarray(GROUNDS[ground], dtype=np.float64)
    img = np.empty((h, w, 3), dtype=np.float64)
    ramp = np.linspace(0, 1, max(horizon, 1))[:, None]
    img[:horizon] = (top * (1 - ramp) + bottom * ramp)[:, None, :]
    rows = np.arange(h - horizon)[:, None]
    band = np.where((rows // max(1, rng.integers(2, 5))) % 2 == 0, 1.0, 0.93)  # perspective stripes
    img[horizon:] = (g * band)[:, None, :]
    img[horizon:] *= 1 + rng.uniform(-0.06, 0.06, (h - horizon, w, 1))  # speckle texture
    if rng.random() < 0.6:  # distant hills
        xs = np.arange(w)
        crest = horizon - h * (0.05 + 0.08 * (1 + np.sin(xs / w * rng.uniform(3, 9) + rng.uniform(0, 6))) / 2)
        yy = np.arange(h)[:, None]
        hill = (yy >= crest[None, :]) & (yy < horizon)
        img[hill] = g * 0.75
    if rng.random() < 0.5:  # sun or moon
        cx, cy, r = rng.uniform(0.1, 0.9) * w, rng.uniform(0.08, 0.3) * h, rng.uniform(0.04, 0.07) * h
        yy, xx = np.mgrid[:h, :w]
        img[((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) & (yy < horizon)] = (250, 240, 200)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _linear_path(rng: np.random.Generator, w: int, half: float, seconds: float, speed: tuple[float, float]) -> tuple:
    """Start and velocity of a linear motion that stays mostly inside the frame for the whole video."""
    v = rng.uniform(*speed) * w * rng.choice([-1.0, 1.0])
    travel = abs(v) * seconds
    lo, hi = half, w - half
    if travel < hi - lo:
        start = rng.uniform(lo, hi - travel)
    else:
        start = (lo + hi) / 2 - travel / 2
    return (start if v > 0 else start + travel), v


def sample_scene(rng: np.random.Generator, size: tuple[int, int], seconds: float, fps: float) -> Scene:
    """Sample a clean scene: background, 1-4 movers, maybe a walking figure, maybe a sign. Sizes scale with H."""
    w, h = size
    sky, ground = str(rng.choice(list(SKIES))), str(rng.choice(list(GROUNDS)))
    horizon = round(h * rng.uniform(0.36, 0.5))
    avoid = [GROUNDS[ground], SKIES[sky][1]]

    crate_lane = bool(rng.random() < 0.3)  # a ball in front of a crate it keeps bouncing off
    n_free = int(rng.integers(1, 4)) - crate_lane
    has_figure, has_sign = bool(rng.random() < 0.55), bool(rng.random() < 0.5)
    names = (
        ["crate"] * crate_lane + [f"mover{i}" for i in range(n_free)] + ["figure"] * has_figure + ["sign"] * has_sign
    )
    hero = str(rng.choice(names)) if rng.random() < 0.6 else ""  # most scenes have one large entity

    def is_big(name: str) -> bool:
        return name == hero or bool(rng.random() < 0.08)

    movers: list[Mover] = []
    ln = float(round(horizon + (h - horizon) * rng.uniform(0.45, 0.95)))
    big = is_big("crate")
    ca, chh = rng.uniform(0.12, 0.2) * h * (1.6 if big else 1), rng.uniform(0.22, 0.35) * h * (1.5 if big else 1)
    cx = rng.uniform(0.6, 0.78) * w
    r = rng.uniform(0.07, 0.12) * h * (1.8 if big else 1)
    lo, hi = r + 1, cx - ca - r
    if crate_lane and hi - lo < 0.15 * w:  # no room for the ball in front of the crate
        n_free = max(n_free, 1)
    elif crate_lane:
        crate = Mover(
            "crate", "wooden", _jitter_rgb(rng, (165, 115, 60)), (110, 70, 35), ca, chh, ln, cx, 0.0, order=0
        )
        cname, crgb = _pick_color(rng, avoid + [crate.rgb])
        span = hi - lo
        m = max(2, round(2 * span / (0.25 * w * rng.uniform(0.25, 0.6))))  # period of m quarter seconds
        v = 2 * span / (0.25 * m)
        q0 = int(rng.integers(0, m))
        tc = q0 / ANNOTATION_FPS - 0.5 / fps  # contacts with the crate half a source frame before a 4 fps frame
        u0 = lo + span - v * tc
        ball = Mover("ball", cname, crgb, _jitter_rgb(rng, PALETTE["white"]), r, 2 * r, ln, u0, v, True, lo, hi)
        movers += [crate, ball]
    for i in range(n_free):
        kind = str(rng.choice(["ball", "box", "car"], p=[0.45, 0.25, 0.3]))
        big = is_big(f"mover{i}")
        cname, crgb = _pick_color(rng, avoid)
        detail = _jitter_rgb(
            rng, PALETTE["white"] if kind == "ball" else (40, 40, 45) if kind == "box" else (170, 215, 240)
        )
        ln = float(round(horizon + (h - horizon) * rng.uniform(0.2, 0.98)))
        if kind == "ball":
            r = rng.uniform(0.2, 0.32) * h if big else rng.uniform(0.06, 0.11) * h
            bounce = rng.uniform(0.1, 0.35) * h if rng.random() < 0.5 else 0.0
            v = rng.uniform(0.1, 0.45) * w * rng.choice([-1.0, 1.0])
            mv = Mover(
                "ball", cname, crgb, detail, r, 2 * r, ln, rng.uniform(r, w - r), v, True, r + 1, w - r - 1,
                bounce, rng.uniform(0.6, 1.6) if bounce else 0.0, rng.uniform(0, math.pi),
            )  # fmt: skip
        elif kind == "box":
            a = rng.uniform(0.18, 0.28) * h if big else rng.uniform(0.07, 0.13) * h
            hh = min(0.6 * h, a * rng.uniform(1.2, 2.0))
            x0, v = (
                _linear_path(rng, w, a, seconds, (0.05, 0.2)) if rng.random() < 0.7 else (rng.uniform(a, w - a), 0.0)
            )
            mv = Mover("box", cname, crgb, detail, a, hh, ln, x0, v)
        else:
            a = rng.uniform(0.32, 0.48) * h if big else rng.uniform(0.14, 0.22) * h
            hh = a * rng.uniform(0.75, 0.95)
            x0, v = _linear_path(rng, w, a, seconds, (0.08, 0.3))
            mv = Mover("car", cname, crgb, detail, a, hh, ln, x0, v)
        movers.append(mv)

    figure = None
    if has_figure:
        big = is_big("figure")
        fh = rng.uniform(0.72, 0.9) * h if big else rng.uniform(0.38, 0.58) * h
        ln = float(round(min(h - 2, max(fh + 3, horizon + (h - horizon) * rng.uniform(0.3, 0.98)))))
        x0, v = _linear_path(rng, w, 0.25 * fh, seconds, (0.04, 0.14))
        sname, srgb = _pick_color(rng, avoid)
        _, prgb = _pick_color(rng, avoid + [srgb])
        skin = _jitter_rgb(
            rng, [(240, 200, 165), (200, 150, 110), (140, 95, 65), (95, 65, 45)][int(rng.integers(4))], 8
        )
        width = max(2, round(fh / 16))
        figure = Figure(
            fh, ln, x0, v, rng.uniform(0.9, 1.6), rng.uniform(0, 2 * math.pi), sname, srgb, prgb, skin, width
        )

    sign = None
    if has_sign:
        word = str(rng.choice(WORDS))
        big = is_big("sign")
        bh = rng.uniform(0.32, 0.48) * h if big else rng.uniform(0.14, 0.22) * h
        font_size = max(8, round(bh * 0.72))
        while _font(font_size).getlength(word) > 0.8 * w and font_size > 8:
            font_size -= 1
        bw = min(0.95 * w, _font(font_size).getlength(word) + rng.uniform(0.3, 0.8) * font_size)
        ln = float(round(horizon + (h - horizon) * rng.uniform(0.05, 0.3)))
        post_h = min(rng.uniform(0.1, 0.3) * h, ln - bh - 2)
        x = rng.uniform(bw / 2 + 1, w - bw / 2 - 1)
        light = rng.random() < 0.5
        board = _jitter_rgb(rng, (238, 235, 220) if light else (35, 80, 50), 12)
        text = (20, 20, 25) if light else (245, 245, 240)
        sign = Sign(word, x, ln, bw, bh, max(0.0, post_h), font_size, board, text, (90, 90, 95))

    bg = _background(rng, w, h, horizon, sky, ground)
    bg.setflags(write=False)
    return Scene(w, h, seconds, fps, sky, ground, horizon, bg, tuple(movers), figure, sign)


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def scene_prompt(scene: Scene) -> str:
    """A text-to-video style prompt describing the clean scene."""
    clauses = []
    for m in scene.movers:
        if m.kind == "ball":
            clauses.append(f"{_a(m.color)} ball {'bounces' if m.bounce else 'rolls'} along")
        elif m.kind == "crate":
            clauses.append("a wooden crate stands on the ground")
        elif m.kind == "box":
            clauses.append(f"{_a(m.color)} box {'slides across' if m.vx else 'rests on'} the ground")
        else:
            clauses.append(f"{_a(m.color)} car drives {'right' if m.vx > 0 else 'left'}")
    if scene.figure is not None:
        clauses.append(
            f"a person in {_a(scene.figure.shirt)} shirt walks {'right' if scene.figure.vx > 0 else 'left'}"
        )
    if scene.sign is not None:
        clauses.append(f"a sign reads {scene.sign.word}")
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return f"{body}, on {scene.ground} under {scene.sky}"


# --------------------------------------------------------------------------------------------------------------------
# Defect sampling and ground-truth measurement
# --------------------------------------------------------------------------------------------------------------------

KINDS: dict[str, tuple[str, ...]] = {
    "Object Distortion": ("stretch", "shear", "notch", "melt", "glitch"),
    "Human Distortion": ("extra_arm", "extra_leg", "backward_knee", "long_arm", "split"),
    "Motion Anomalies": ("vanish", "teleport", "jitter", "flicker", "duplicate"),
    "Physical Violations": ("hover", "sink", "through"),
    "Character Anomalies": ("change", "garble", "layout"),
}
"""The defect kinds of each category (App. B.1.2's subtypes that a 2-D world can show)."""

GLITCH_RGB: RGB = (255, 0, 255)
"""The glitch's cell colour: a saturated magenta that no palette, sky or ground colour comes near."""

OPT_IN_KINDS: frozenset[str] = frozenset({"glitch"})
"""Kinds drawn only where ``kinds`` names them, so that the default world (all other kinds) stays video for video
what it was before they were added. ``glitch``, a blocky texture corruption, is the single-frame anomaly that a small
model trained from random weights learns to see (``experiments/status_probe.py``), unlike the shape changes."""


def _drawable(kind: str, allowed: frozenset[str] | None) -> bool:
    """Whether the sampler may draw ``kind``: named in ``allowed``, or any kind but the opt-in ones by default."""
    return kind in allowed if allowed is not None else kind not in OPT_IN_KINDS


def targets_for(scene: Scene, label: str, kind: str) -> list[str]:
    """The entities of ``scene`` that a defect ``kind`` of category ``label`` can change ("mover0", "figure", ...)."""
    movers = [f"mover{i}" for i in range(len(scene.movers))]
    fig = ["figure"] if scene.figure is not None else []
    sign = ["sign"] if scene.sign is not None else []
    if label == "Object Distortion":
        return movers
    if label == "Human Distortion":
        return fig
    if label == "Character Anomalies":
        return sign
    if label == "Motion Anomalies":
        return movers + fig + (sign if kind in ("vanish", "flicker") else [])
    if kind == "through":
        return [
            f"mover{i}"
            for i, m in enumerate(scene.movers)
            if m.reflect and i > 0 and scene.movers[i - 1].kind == "crate"
        ]
    return [f"mover{i}" for i, m in enumerate(scene.movers) if m.grounded] + fig


def _all_targets(scene: Scene) -> list[str]:
    return (
        [f"mover{i}" for i in range(len(scene.movers))]
        + ["figure"] * (scene.figure is not None)
        + ["sign"] * (scene.sign is not None)
    )


def _extent(e: Mover | Figure | Sign) -> tuple[float, float]:
    """(width, height) of an entity in pixels."""
    if isinstance(e, Mover):
        return 2 * e.size, e.height
    if isinstance(e, Figure):
        return 0.4 * e.height, e.height
    return e.board_w, e.board_h + e.post_h


def _entity_x(scene: Scene, target: str, t: float) -> float:
    """Clean horizontal centre of an entity at time ``t``."""
    ent = scene.entity(target)
    if isinstance(ent, Mover):
        return _mover_x(ent, t)
    if isinstance(ent, Figure):
        return ent.x0 + ent.vx * t
    return ent.x


def _params(
    rng: np.random.Generator, scene: Scene, kind: str, target: str, window: tuple[int, int], big: bool
) -> tuple[dict, str, str]:
    """Magnitudes of a defect over ``window`` (larger when ``big``), its reason and its region strings."""
    ent = scene.entity(target)
    name = ent.name
    ew, eh = _extent(ent)
    w = scene.width
    u = rng.uniform
    side = str(rng.choice(["left", "right"]))
    if kind == "stretch":
        f = u(1.7, 2.4) if big else u(1.25, 1.5)
        wide = rng.random() < 0.6
        p = {"sx": f if wide else 1.0, "sy": 1.0 if wide else f}
        return p, f"the {name} is stretched to {f:.1f} times its {'width' if wide else 'height'}", f"the {name}"
    if kind == "shear":
        k = u(0.6, 1.0) if big else u(0.25, 0.45)
        k *= rng.choice([-1.0, 1.0])
        return {"k": k}, f"the {name} is skewed sideways as if made of rubber", f"the {name}"
    if kind == "notch":
        wd, dp = (u(0.35, 0.6), u(0.4, 0.7)) if big else (u(0.18, 0.3), u(0.2, 0.35))
        if rng.random() < 0.5:
            c = u(-0.4, 0.4)
            tri = [[c - wd, -1.05], [c + wd, -1.05], [c, -1.0 + dp]]
            where = "top"
        else:
            sgn = 1.0 if side == "right" else -1.0
            tri = [[sgn * 1.05, -0.5 - wd], [sgn * 1.05, -0.5 + wd], [sgn * (1.0 - 2 * dp), -0.5]]
            where = side
        return (
            {"tri": tri},
            f"a wedge-shaped chunk is missing from the {where} of the {name}",
            f"{where} of the {name}",
        )
    if kind == "melt":
        p = {"w": u(1.8, 2.6) if big else u(1.2, 1.5), "rise": u(0.3, 0.5) if big else u(0.12, 0.22)}
        return p, f"the bottom of the {name} melts and spreads into a puddle", f"bottom of the {name}"
    if kind == "glitch":
        lo, span = (u(0.0, 0.15), u(0.75, 1.0)) if big else (u(0.1, 0.6), u(0.25, 0.4))
        p = {
            "cell": max(2.0, round(u(0.25, 0.4) * min(ew, eh))),
            "lo": lo,
            "hi": min(1.0, lo + span),
            "rgb": list(GLITCH_RGB),
        }
        return p, f"the surface of the {name} breaks into a blocky checkerboard of wrong colours", f"the {name}"
    if kind == "extra_arm":
        p = {"angle": u(1.9, 2.8) * rng.choice([-1.0, 1.0]), "bend": u(-0.6, 0.6)}
        return p, "the person has a third arm growing out of the shoulder", "the person's shoulders"
    if kind == "extra_leg":
        p = {"angle": u(0.8, 1.3) * rng.choice([-1.0, 1.0]), "bend": u(-0.4, 0.4)}
        return p, "the person has a third leg sticking out of the hips", "the person's hips and legs"
    if kind == "backward_knee":
        p = {"side": "L" if side == "left" else "R", "bend": u(0.9, 1.5)}
        return p, f"the person's {side} knee bends backwards", f"the person's {side} leg"
    if kind == "long_arm":
        p = {"side": "L" if side == "left" else "R", "scale": u(1.9, 2.5) if big else u(1.5, 1.8)}
        return p, f"the person's {side} arm is {p['scale']:.1f} times too long", f"the person's {side} arm"
    if kind == "split":
        dx = eh * (u(0.35, 0.6) if big else u(0.08, 0.15)) * rng.choice([-1.0, 1.0])
        p = {"dx": dx, "dy": eh * (u(0.1, 0.2) if big else u(0.04, 0.1))}
        return p, "the person's upper body is torn from the hips and shifted sideways", "the person's torso"
    if kind == "vanish":
        return {}, f"the {name} suddenly disappears and then reappears", f"where the {name} should be"
    if kind in ("teleport", "duplicate"):
        dist = (u(0.3, 0.5) if big else u(0.1, 0.2)) * w + ew
        x_mid = _entity_x(scene, target, (window[0] + window[1] + 1) / 2 / ANNOTATION_FPS)
        room = (w - x_mid if x_mid < w / 2 else x_mid) - ew / 2 - 1  # towards the side with more room
        dist = max(0.6 * ew, min(dist, room))
        dx = dist if x_mid < w / 2 else -dist
        dy = -u(0.0, 0.3) * eh if isinstance(ent, Mover) and ent.kind == "ball" else 0.0
        if kind == "teleport":
            return {"dx": dx, "dy": dy}, f"the {name} jumps to another place and back", f"the {name}"
        return (
            {"dx": dx, "dy": dy},
            f"a second copy of the {name} suddenly appears and vanishes",
            f"copy of the {name}",
        )
    if kind == "jitter":
        mag = max(2.0, (u(0.25, 0.4) if big else u(0.08, 0.15)) * max(ew, eh))
        angles = [float(a) for a in rng.uniform(0, 2 * math.pi, 16)]
        return {"mag": mag, "angles": angles}, f"the {name} jitters back and forth between frames", f"the {name}"
    if kind == "flicker":
        subtle = rng.random() < 0.35
        p = {"subtle": subtle, "strength": u(0.12, 0.2)}
        return p, f"the {name} flickers, its colours changing abruptly between frames", f"the {name}"
    if kind == "hover":
        lift = max(3.0, (u(0.6, 1.2) if big else u(0.2, 0.4)) * eh)
        return {"lift": lift}, f"the {name} floats above the ground with nothing supporting it", f"the {name}"
    if kind == "sink":
        depth = max(3.0, (u(0.4, 0.7) if big else u(0.15, 0.3)) * eh)
        return {"depth": depth}, f"the {name} sinks into the solid ground", f"lower part of the {name}"
    if kind == "through":  # the contact with the crate is half a source frame before the window starts
        p = {"tc": window[0] / ANNOTATION_FPS - 0.5 / scene.fps}
        return p, f"the {name} rolls through the wooden crate instead of bouncing off it", f"the {name} and the crate"
    sign = scene.sign
    word = sign.word
    k = len(word) if big else int(rng.integers(1, max(2, len(word) // 2 + 1)))
    idx = sorted(int(i) for i in rng.choice(len(word), size=min(k, len(word)), replace=False))
    if kind == "change":
        letters = {str(i): str(rng.choice([c for c in _LETTERS if c != word[i]])) for i in idx}
        new = "".join(letters.get(str(i), c) for i, c in enumerate(word))
        return {"letters": letters}, f"the sign's text changes from {word} to {new}", "the sign's text"
    if kind == "garble":
        glyphs = {}
        for i in idx:
            t = str(rng.choice(["flip", "symbol", "scribble"]))
            g: dict[str, Any] = {"type": t}
            if t == "symbol":
                g["char"] = str(rng.choice(list(_SYMBOLS)))
            elif t == "scribble":
                g["lines"] = [[float(v) for v in rng.uniform(0.05, 0.95, 4)] for _ in range(int(rng.integers(2, 5)))]
            glyphs[str(i)] = g
        return {"glyphs": glyphs}, "letters of the sign turn into unreadable glyphs", "the sign's text"
    dys = [0.0] * len(word)
    for i in idx:
        dys[i] = float(u(0.25, 0.5) * rng.choice([-1.0, 1.0]))
    return {"dys": dys}, "the letters of the sign jump out of line", "the sign's text"


def sample_window(
    rng: np.random.Generator,
    scene: Scene,
    kind: str,
    target: str,
    long: bool,
    inside: tuple[int, int] | None = None,
) -> tuple[int, int] | None:
    """A window of 4-12 (``long``) or 1-3 frames, within ``inside`` when given; None if none fits."""
    lo, hi = inside if inside is not None else (0, scene.num_slots - 1)
    length = min(int(rng.integers(4, 13)) if long else int(rng.integers(1, 4)), hi - lo + 1)
    if kind == "through":  # 2+ frames (the first barely shows it), ending before the ball is out of the crate
        m, crate = scene.entity(target), scene.movers[int(target[5:]) - 1]
        pass_time = (2 * crate.size + 2 * m.size) / abs(m.vx)
        length = min(max(length, 2), math.floor(pass_time * ANNOTATION_FPS - ANNOTATION_FPS / (2 * scene.fps)))
        if length < 2:
            return None
    starts = list(range(lo, hi - length + 2))
    if kind == "through":  # must start right after a contact with the crate (see sample_scene)
        period = round(2 * (m.hi - m.lo) / abs(m.vx) * ANNOTATION_FPS)
        q0 = round((m.hi - m.x0) / m.vx * ANNOTATION_FPS + 0.5 * ANNOTATION_FPS / scene.fps)
        starts = [q for q in starts if (q - q0) % period == 0]
    if not starts:
        return None
    s = int(rng.choice(starts))
    return s, s + length - 1


def _cuts(occupied: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """Runs of occupied indices separated by at least ``gap`` empty ones, as inclusive (first, last) pairs."""
    idx = np.flatnonzero(occupied)
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > gap)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]])
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def diff_regions(mask: np.ndarray, max_boxes: int = 4) -> list[tuple[int, int, int, int]]:
    """Tight pixel boxes (x0, y0, x1, y1 inclusive) of a change mask [H, W], split where parts are >= 4 % apart.

    Recursive XY cut; more than ``max_boxes`` parts collapse into one box around all of them.
    """
    h, w = mask.shape
    gx, gy = max(2, round(0.04 * w)), max(2, round(0.04 * h))

    def cut(y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int, int, int]]:
        sub = mask[y0 : y1 + 1, x0 : x1 + 1]
        cols = _cuts(sub.any(0), gx)
        rows = _cuts(sub.any(1), gy)
        if not cols:
            return []
        if len(cols) > 1:
            return [b for c0, c1 in cols for b in cut(y0, y1, x0 + c0, x0 + c1)]
        if len(rows) > 1:
            return [b for r0, r1 in rows for b in cut(y0 + r0, y0 + r1, x0, x1)]
        return [(x0 + cols[0][0], y0 + rows[0][0], x0 + cols[0][1], y0 + rows[0][1])]

    boxes = cut(0, h - 1, 0, w - 1)
    if len(boxes) > max_boxes:
        ys, xs = np.nonzero(mask)
        boxes = [(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))]
    return boxes


def pixel_box_to_qwen(box: tuple[int, int, int, int], width: int, height: int) -> Box:
    """Inclusive pixel box -> Qwen 0-1000 box that contains it: floor of the low edges, ceil of the high edges."""
    x0, y0, x1, y1 = box
    return (
        math.floor(1000 * x0 / width),
        math.floor(1000 * y0 / height),
        min(1000, math.ceil(1000 * (x1 + 1) / width)),
        min(1000, math.ceil(1000 * (y1 + 1) / height)),
    )


_TWO_PLACES = frozenset({"teleport", "through"})
"""Kinds whose change shows at two separate places (where the entity went and where it should be): one box each."""


def measure_defect(scene: Scene, defect: Defect, clean: np.ndarray | None = None) -> tuple[AnomalySpan, float] | None:
    """Measure a defect's ground truth from renders: its AnomalySpan (without saliency) and its contrast in [0, 1].

    Returns None if some source frame of the window would not show it, or shows fewer than 4 changed pixels.
    ``clean`` may hold the clean source frames (``render_frames(scene)``) to save work.
    """
    s, e = defect.window
    if e >= scene.num_slots:
        return None
    fps = scene.fps
    first = math.ceil(s / ANNOTATION_FPS * fps - _EPS)
    stop = min(scene.num_frames, math.ceil((e + 1) / ANNOTATION_FPS * fps - _EPS))
    masks: dict[int, np.ndarray] = {}
    contrasts = []
    for k in range(first, stop):
        ref = clean[k] if clean is not None else render(scene, k / fps)
        d = np.abs(render(scene, k / fps, (defect,)).astype(np.int16) - ref)
        delta = np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])
        mask = delta > 0
        if mask.sum() < 4:
            return None
        masks[k] = mask
        contrasts.append(float(delta[mask].mean()) / 255.0)
    bboxes: dict[int, list[Box]] = {}
    for j in range(s, e + 1):
        k = math.floor(j / ANNOTATION_FPS * fps + _EPS)
        mask = masks[k]
        parts = diff_regions(mask) if defect.kind in _TWO_PLACES else diff_regions(mask, max_boxes=1)
        bboxes[j] = [pixel_box_to_qwen(b, scene.width, scene.height) for b in parts]
    span = AnomalySpan(defect.label, (s, e), defect.reason, defect.region, "salient", bboxes)
    return span, float(np.mean(contrasts))


def saliency(span: AnomalySpan, contrast: float) -> str:
    """The documented saliency rule: non-salient when low-contrast, or both short (< 1 s) and small (< 3 %)."""
    short_small = anomaly_duration(span, ANNOTATION_FPS) < 1.0 and anomaly_area(span) < NONSALIENT_SMALL_AREA
    return "non-salient" if contrast < NONSALIENT_CONTRAST or short_small else "salient"


def make_defect(
    rng: np.random.Generator,
    scene: Scene,
    label: str,
    kind: str,
    target: str,
    window: tuple[int, int],
    big: bool = False,
) -> Defect:
    """A defect of ``kind`` on ``target`` over ``window`` with random magnitudes (larger when ``big``).

    Whether the scene shows it on every frame of the window is for :func:`measure_defect` to say.
    """
    if kind not in KINDS[label]:
        raise ValueError(f"defect kind {kind!r} is not one of {list(KINDS[label])} of '{label}'")
    if target not in targets_for(scene, label, kind):
        raise ValueError(f"defect kind {kind!r} cannot change {target!r} of this scene")
    params, reason, region = _params(rng, scene, kind, target, window, big)
    return Defect(label, kind, target, window, params, reason, region)


def _split_of(spans: list[AnomalySpan]) -> str:
    return hard_split(Annotation("", "", "abnormal", ANNOTATION_FPS, spans))


def _sample_defect(
    rng: np.random.Generator,
    scene: Scene,
    label: str,
    clean: np.ndarray,
    long: bool,
    big: bool,
    prior: list[tuple[Defect, AnomalySpan]],
    allowed: frozenset[str] | None = None,
    salient: bool = False,
) -> tuple[Defect, AnomalySpan] | None:
    """Sample a defect of ``label`` (of a kind in ``allowed``, default any) on an entity without one in ``prior``, so
    that the video (with the ``prior`` anomalies) lands in the CaC-Bench-Hard group given by ``long`` and ``big``;
    after a few misses the last valid defect is kept. A short second anomaly stays inside the first one's window.
    ``salient`` turns subtle flickers into full-strength ones (see :func:`sample_video`)."""
    target_split = split_name(1.0 if long else 0.5, 0.5 if big else 0.0)
    used = {d.target for d, _ in prior}
    inside = prior[0][0].window if prior and not long else None
    kinds = [
        k for k in KINDS[label] if _drawable(k, allowed) and [t for t in targets_for(scene, label, k) if t not in used]
    ]
    if not kinds:
        return None
    first = str(rng.choice(kinds))
    fallback = None
    for attempt in range(_TRIES):
        kind = first if attempt < _TRIES // 2 else str(rng.choice(kinds))  # keep the kind mix close to uniform
        targets = [t for t in targets_for(scene, label, kind) if t not in used]
        sizes = [_extent(scene.entity(t))[0] * _extent(scene.entity(t))[1] for t in targets]
        order = np.argsort(sizes)
        pick = order[-1] if big and rng.random() < 0.7 else order[0] if not big and rng.random() < 0.7 else None
        target = targets[int(pick)] if pick is not None else str(rng.choice(targets))
        window = sample_window(rng, scene, kind, target, long, inside)
        if window is None:
            continue
        defect = make_defect(rng, scene, label, kind, target, window, big)
        if salient and kind == "flicker":
            defect.params["subtle"] = False
        measured = measure_defect(scene, defect, clean)
        if measured is None:
            continue
        span, contrast = measured
        span.saliency = saliency(span, contrast)
        if _split_of([s for _, s in prior] + [span]) == target_split:
            return defect, span
        fallback = fallback or (defect, span)
    return fallback


_CATEGORY_WEIGHTS = {
    "Object Distortion": 1.0,
    "Human Distortion": 1.6,
    "Motion Anomalies": 0.9,
    "Physical Violations": 1.0,
    "Character Anomalies": 1.8,
}


def _check_timing(size: tuple[int, int], seconds: float, fps: float) -> None:
    if size[0] < 32 or size[1] < 32:
        raise ValueError(f"size must be at least 32x32, got {size[0]}x{size[1]}")
    m = fps / ANNOTATION_FPS
    if fps <= 0 or abs(m - round(m)) > 1e-9:
        raise ValueError(f"fps must be a positive multiple of 4 so the 4 fps frames fall on source frames, got {fps}")
    if seconds < 0.25 or abs(seconds * fps - round(seconds * fps)) > 1e-6:
        raise ValueError(f"seconds must be >= 0.25 and a whole number of frames at {fps} fps, got {seconds}")


def check_kinds(kinds: Sequence[str] | None) -> frozenset[str] | None:
    """``kinds`` as a set after checking that each is a defect kind of :data:`KINDS` (None: all kinds)."""
    if kinds is None:
        return None
    known = {k for ks in KINDS.values() for k in ks}
    bad = sorted(set(kinds) - known)
    if bad or not kinds:
        raise ValueError(f"unknown defect kinds {bad or '(none given)'}; expected some of {sorted(known)}")
    return frozenset(kinds)


def _feasible(scene: Scene, allowed: frozenset[str] | None) -> list[str]:
    """The categories with a defect kind (in ``allowed``) that some entity of ``scene`` can show."""
    return [c for c in TAXONOMY if any(targets_for(scene, c, k) for k in KINDS[c] if _drawable(k, allowed))]


def _place_defects(
    rng: np.random.Generator, scene: Scene, allowed: frozenset[str] | None, salient: bool = False
) -> list[tuple[Defect, AnomalySpan]]:
    """One anomaly, or two on different entities (one video in four), of kinds in ``allowed``; [] if none fits.
    ``salient``: every video in a large group, flickers at full strength (:func:`sample_video`)."""
    clean = render_frames(scene)
    feasible = _feasible(scene, allowed)
    weights = np.array([_CATEGORY_WEIGHTS[c] for c in feasible])
    n_anoms = 2 if rng.random() < 0.25 else 1
    large = max(_extent(scene.entity(t))[0] * _extent(scene.entity(t))[1] for t in _all_targets(scene))
    p_big = 0.8 if large >= 0.12 * scene.width * scene.height else 0.15
    long, big = bool(rng.random() < 0.5), bool(rng.random() < p_big)  # the video's CaC-Bench-Hard group
    if salient:  # drawn all the same, so that the generator's stream stays that of the default world
        big = True
    placed: list[tuple[Defect, AnomalySpan]] = []
    for _ in range(n_anoms):
        label = str(rng.choice(feasible, p=weights / weights.sum()))
        got = _sample_defect(rng, scene, label, clean, long, big, placed, allowed, salient)
        if got is None and not placed:  # the label had nothing left: fall back to any movable entity
            got = _sample_defect(rng, scene, "Motion Anomalies", clean, long, big, placed, allowed, salient)
        if got is not None:
            placed.append(got)
    return placed


def sample_video(
    seed: int,
    index: int,
    size: tuple[int, int] = (160, 96),
    seconds: float = 4.0,
    fps: float = 16.0,
    kinds: Sequence[str] | None = None,
    salient: bool = False,
) -> SynthVideo:
    """Sample video ``index`` of the world ``seed``: its scene, defects and measured ground truth (nothing written).

    Videos ``2k`` and ``2k + 1`` form a pair of which exactly one is normal; about one abnormal video in four gets a
    second anomaly on another entity. ``kinds`` restricts the anomalies to those defect kinds (names of
    :data:`KINDS`, e.g. ``["vanish", "melt"]``); an abnormal video whose scene has no entity for any of them draws
    its scene again from the same generator. ``kinds=None`` (all kinds) gives the default world, unchanged.
    ``salient=True`` aims every anomalous video at a large (>= 20 %) group of CaC-Bench-Hard (App. B; the duration
    group is drawn as in the default world, half under 1 s) and renders flickers at full strength: a world whose
    anomalies a small model trained from random weights can learn to see (``experiments/synthetic_three_stage.py``);
    the scenes and which videos are anomalous stay those of the world.
    """
    _check_timing(size, seconds, fps)
    allowed = check_kinds(kinds)
    pair = np.random.default_rng([seed, index - index % 2, 1])
    abnormal = (index % 2) == int(pair.integers(2))
    rng = np.random.default_rng([seed, index])
    vid = f"{index:06d}"
    placed: list[tuple[Defect, AnomalySpan]] = []
    for _ in range(1 if allowed is None else 50):  # with restricted kinds, a scene that cannot show them is redrawn
        scene = sample_scene(rng, size, seconds, fps)
        if abnormal and _feasible(scene, allowed):
            placed = _place_defects(rng, scene, allowed, salient)
        if not abnormal or placed:
            break
    if abnormal and not placed:
        raise RuntimeError(f"video {vid} of seed {seed}: could not place any anomaly")
    defects = [d for d, _ in placed]
    spans = [s for _, s in placed]
    order = sorted(range(len(spans)), key=lambda i: (TAXONOMY.index(spans[i].label), spans[i].frames))
    defects = [defects[i] for i in order]
    spans = [spans[i] for i in order]
    meta = {"id": vid, "source": "synthetic", "seed": seed, "index": index, "kinds": [d.kind for d in defects]}
    annotation = Annotation(
        video=f"videos/{vid}.mp4",
        prompt=scene_prompt(scene),
        status="abnormal" if defects else "normal",
        fps=ANNOTATION_FPS,
        anomalies=spans,
        meta=meta,
    )
    return SynthVideo(scene, tuple(defects), annotation)


# --------------------------------------------------------------------------------------------------------------------
# Writing a world
# --------------------------------------------------------------------------------------------------------------------


def generate(
    out: str | Path,
    num_videos: int = 32,
    seed: int = 0,
    size: tuple[int, int] = (160, 96),
    seconds: float = 4.0,
    fps: float = 16.0,
    progress: bool = True,
    kinds: Sequence[str] | None = None,
    salient: bool = False,
) -> Path:
    """Render ``num_videos`` videos into ``out/videos/`` and write ``out/manifest.jsonl`` and ``out/world.json``.

    ``kinds`` restricts the anomalies to those defect kinds, ``salient`` makes them all large and strong (see
    :func:`sample_video`). Resumable: videos already on
    disk are not re-rendered (their ground truth is re-derived from the seed, which is cheap), and the manifest is
    rewritten atomically. Re-running on an ``out`` made with another seed, size, length, frame rate, kinds or salience raises
    ValueError. Returns the manifest path.
    """
    import torch
    from tqdm import tqdm

    from cac_align.video import save_video

    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    _check_timing(size, seconds, fps)
    out = Path(out)
    world = {
        "generator": "cac_align.data.synthetic",
        "version": WORLD_VERSION,
        "seed": seed,
        "size": [int(size[0]), int(size[1])],
        "seconds": seconds,
        "fps": fps,
        "annotation_fps": ANNOTATION_FPS,
        "num_videos": num_videos,
        "kinds": sorted(check_kinds(kinds)) if kinds is not None else None,
        "salient": bool(salient),
    }
    world_path = out / "world.json"
    if world_path.is_file():
        old = json.loads(world_path.read_text(encoding="utf-8"))
        old.setdefault("salient", False)  # worlds written before the option existed
        for key in ("version", "seed", "size", "seconds", "fps", "kinds", "salient"):
            if old.get(key) != world[key]:
                raise ValueError(
                    f"{world_path}: field '{key}' is {old.get(key)!r} but this run asks for {world[key]!r}; "
                    "use another output folder"
                )
    atomic_write_json(world_path, world)
    annotations = []
    for i in tqdm(range(num_videos), desc="synth", unit="video", disable=not progress):
        video = sample_video(seed, i, size, seconds, fps, kinds, salient)
        path = out / video.annotation.video
        if not path.is_file():
            frames = torch.from_numpy(render_frames(video.scene, video.defects)).permute(0, 3, 1, 2)
            save_video(frames.float().div_(255.0), path, fps=fps)
        annotations.append(video.annotation)
    manifest = out / "manifest.jsonl"
    write_manifest(manifest, annotations)
    return manifest


def summarize(manifest_path: str | Path) -> str:
    """A short human-readable summary of a manifest: counts per status, category, saliency and hard split."""
    anns = read_manifest(manifest_path)
    abnormal = [a for a in anns if a.is_abnormal]
    spans = [s for a in abnormal for s in a.anomalies]
    cats = Counter(s.label for s in spans)
    sal = Counter(s.saliency for s in spans)
    splits = Counter(hard_split(a) for a in abnormal)
    lines = [
        f"{manifest_path}: {len(anns)} videos, {len(anns) - len(abnormal)} normal, {len(abnormal)} abnormal, "
        f"{len(spans)} anomalies",
        "categories: " + ", ".join(f"{c} {cats[c]}" for c in TAXONOMY),
        "saliency: " + ", ".join(f"{s} {sal[s]}" for s in ("salient", "non-salient")),
        "hard splits: " + ", ".join(f"{s} {splits[s]}" for s in HARD_SPLITS),
    ]
    if spans:
        mean_len = np.mean([anomaly_duration(s, ANNOTATION_FPS) for s in spans])
        mean_area = np.mean([anomaly_area(s) for s in spans])
        lines.append(f"mean anomaly duration {mean_len:.2f} s, mean area {100 * mean_area:.1f} % of the frame")
    return "\n".join(lines)
