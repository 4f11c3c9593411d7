"""Procedural pedestrian crops drawn with PIL: a person (head, hair, face, garments, limbs, shoes,
accessories) in front / back / side view on a street-like background, with pose, lighting, scale,
blur and occlusion varied per image. Pure function of its inputs: same inputs → identical pixels.

Geometry is expressed in fractions of the person's height `ph` (head top = 0, soles = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "white": (236, 236, 232),
    "red": (205, 32, 38),
    "blue": (36, 72, 196),
    "green": (42, 152, 62),
    "yellow": (238, 208, 42),
    "gray": (130, 130, 132),
    "purple": (122, 52, 164),
    "pink": (242, 142, 184),
    "orange": (242, 132, 30),
    "brown": (122, 76, 40),
}
HAIR_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (22, 20, 20),
    "brown": (98, 60, 30),
    "blonde": (222, 192, 112),
    "gray": (170, 170, 168),
    "red": (168, 62, 26),
}
SKIN_TONES = [(250, 214, 186), (234, 190, 150), (204, 150, 110), (160, 108, 72), (110, 74, 50)]
VIEWS = ("front", "back", "side")


@dataclass(frozen=True)
class Style:
    """Per-identity appearance constants that are not attributes (kept across that identity's images)."""

    skin: tuple[int, int, int]
    upper: tuple[int, int, int]
    lower: tuple[int, int, int]
    shoes: tuple[int, int, int]
    hair: tuple[int, int, int]
    bag: tuple[int, int, int]
    hat: tuple[int, int, int]
    build: float  # 0.92..1.08 width factor


def make_style(attrs: dict, rng: np.random.Generator) -> Style:
    def jitter(rgb, amount=12):
        return tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255))

    bag = attrs["bag_color"] if attrs["bag"] != "none" else "black"
    hat_names = [c for c in COLORS if c != attrs["hair_color"]]
    return Style(
        skin=jitter(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 6),
        upper=jitter(COLORS[attrs["upper_color"]]),
        lower=jitter(COLORS[attrs["lower_color"]]),
        shoes=jitter(COLORS[attrs["shoes_color"]]),
        hair=jitter(HAIR_COLORS[attrs["hair_color"]], 8),
        bag=jitter(COLORS[bag]),
        hat=jitter(COLORS[hat_names[int(rng.integers(len(hat_names)))]]),
        build=float(rng.uniform(0.92, 1.08)),
    )


def _shade(rgb, f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, v * f))) for v in rgb)


def _muted(rng: np.random.Generator, base, spread: int = 40) -> tuple[int, int, int]:
    """A desaturated colour near `base` for background clutter (keeps garment colours the salient ones)."""
    c = [float(b) + int(d) for b, d in zip(base, rng.integers(-spread, spread + 1, 3))]
    g = sum(c) / 3
    return tuple(int(min(255, max(0, 0.45 * v + 0.55 * g))) for v in c)


def _background(w: int, h: int, cam: int, rng: np.random.Generator) -> Image.Image:
    cam_rng = np.random.default_rng([991, cam])  # the camera's scene palette, fixed per camera
    wall = cam_rng.integers(70, 200, 3).astype(np.float32)
    ground = cam_rng.integers(60, 150, 3).astype(np.float32)
    wall = 0.5 * wall + 0.5 * wall.mean() + rng.integers(-15, 16, 3)
    ground = 0.3 * ground + 0.7 * ground.mean() + rng.integers(-15, 16, 3)
    horizon = int(h * rng.uniform(0.55, 0.75))
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    col = np.where(np.arange(h)[:, None] < horizon, wall * (1.15 - 0.15 * t), ground * (0.85 + 0.3 * (t - horizon / h)))
    column = Image.fromarray(np.clip(col, 0, 255).astype(np.uint8)[:, None, :], "RGB")
    img = column.resize((w, h), Image.Resampling.NEAREST)
    wall_l, ground_l = wall.tolist(), ground.tolist()
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):  # facades, windows, doors
        x0, y0 = int(rng.integers(-20, w)), int(rng.integers(0, horizon))
        bw, bh = int(rng.integers(10, 60)), int(rng.integers(10, 90))
        d.rectangle([x0, y0, x0 + bw, min(horizon, y0 + bh)], fill=_muted(rng, wall_l))
    for _ in range(int(rng.integers(0, 3))):  # street clutter: round things, kerb lines
        x0, y0, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(4, 16))
        d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=_muted(rng, ground_l, 60))
    if rng.random() < 0.6:
        y = int(rng.integers(horizon, h))
        d.line([(0, y), (w, y + int(rng.integers(-10, 11)))], fill=_muted(rng, [g + 50 for g in ground_l]), width=2)
    return img


@dataclass
class _Pose:
    view: str
    facing: int  # side view: +1 faces right, -1 faces left
    arm: float  # swing angle (radians)
    leg: float


class _Painter:
    """Draws one person; all coordinates in fractions of person height from (cx, top)."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, top: float, ph: float):
        self.d, self.cx, self.top, self.ph = draw, cx, top, ph

    def p(self, fx: float, fy: float) -> tuple[float, float]:
        return (self.cx + fx * self.ph, self.top + fy * self.ph)

    def w(self, f: float) -> int:
        return max(1, round(f * self.ph))

    def poly(self, pts, fill):
        self.d.polygon([self.p(x, y) for x, y in pts], fill=fill)

    def ellipse(self, fx, fy, rx, ry, fill=None, outline=None, width=1):
        (x0, y0), (x1, y1) = self.p(fx - rx, fy - ry), self.p(fx + rx, fy + ry)
        self.d.ellipse([x0, y0, x1, y1], fill=fill, outline=outline, width=width)

    def chord(self, fx, fy, rx, ry, start, end, fill):
        (x0, y0), (x1, y1) = self.p(fx - rx, fy - ry), self.p(fx + rx, fy + ry)
        self.d.chord([x0, y0, x1, y1], start, end, fill=fill)

    def limb(self, pts, width, fill):
        xy = [self.p(x, y) for x, y in pts]
        wpx = self.w(width)
        self.d.line(xy, fill=fill, width=wpx, joint="curve")
        r = wpx / 2
        for x, y in (xy[0], xy[-1]):
            self.d.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _limb_points(origin, angle, l1, l2, bend):
    """Hip/shoulder → knee/elbow → ankle/wrist for a limb swinging by `angle` (0 = straight down)."""
    x0, y0 = origin
    x1, y1 = x0 + l1 * math.sin(angle), y0 + l1 * math.cos(angle)
    a2 = angle + bend
    return [(x0, y0), (x1, y1), (x1 + l2 * math.sin(a2), y1 + l2 * math.cos(a2))]


def _end_from(pts, frac):
    """The last stretch of a 3-point limb, from its end back to `frac` of its length (cuffs)."""
    return [_split_at(pts, 1.0)[-1], _split_at(pts, frac)[-1]]


def _split_at(pts, frac):
    """The part of a 3-point limb from its start to `frac` of its length (for short sleeves/shorts)."""
    (x0, y0), (x1, y1), (x2, y2) = pts
    l1, l2 = math.dist((x0, y0), (x1, y1)), math.dist((x1, y1), (x2, y2))
    target = frac * (l1 + l2)
    if target <= l1:
        t = target / l1
        return [(x0, y0), (x0 + t * (x1 - x0), y0 + t * (y1 - y0))]
    t = (target - l1) / l2
    return [(x0, y0), (x1, y1), (x1 + t * (x2 - x1), y1 + t * (y2 - y1))]


def _draw_person(pt: _Painter, a: dict, s: Style, pose: _Pose):
    female = a["gender"] == "female"
    side, back, front = pose.view == "side", pose.view == "back", pose.view == "front"
    f = pose.facing if side else 1
    sw = (0.108 if female else 0.126) * s.build  # shoulder half-width
    ww = (0.084 if female else 0.094) * s.build  # waist
    hw = (0.112 if female else 0.100) * s.build  # hips
    if side:
        sw, ww, hw = 0.068 * s.build, 0.062 * s.build, 0.07 * s.build
    ut = a["upper_type"]
    if ut == "jacket":  # padded: broader at the shoulders
        sw += 0.012 * s.build
    long_sleeves = ut != "t-shirt"
    upper_bottom = 0.66 if a["upper_type"] == "coat" else 0.51
    skin, hair = s.skin, s.hair

    # legs: side view strides, front/back stand with a slight sway
    if side:
        hips = [(0.0, 0.5), (0.0, 0.5)]
        leg_angles = [pose.leg, -pose.leg]
    else:
        hips = [(-0.05, 0.5), (0.05, 0.5)]
        leg_angles = [-0.05 - pose.leg * 0.25, 0.05 + pose.leg * 0.25]
    knee_bend = -0.15 if side else 0.0
    legs = [_limb_points(h, ang, 0.22, 0.23, knee_bend * abs(ang)) for h, ang in zip(hips, leg_angles)]
    lower_color = s.lower
    lt = a["lower_type"]
    for i, leg in enumerate(legs):
        shade = 0.82 if side and i == 1 else 1.0
        if lt in ("trousers", "jeans"):
            pt.limb(leg, 0.072, _shade(lower_color, shade))
            if lt == "jeans":  # a lighter seam down the shin and rolled-up cuffs, seen from every side
                pt.limb(_split_at(leg, 0.9)[-2:], 0.018, _shade(lower_color, 1.3 * shade))
                pt.limb(_end_from(leg, 0.9), 0.088, _shade(lower_color, 1.45 * shade))
        else:
            pt.limb(leg, 0.062, _shade(skin, shade))
            if lt == "shorts":
                pt.limb(_split_at(leg, 0.45), 0.078, _shade(lower_color, shade))
        ax, ay = leg[-1]
        shoe = _shade(s.shoes, shade)
        if side:
            pt.ellipse(ax + 0.03 * f, ay + 0.02, 0.055, 0.026, fill=shoe)
        else:
            pt.ellipse(ax, ay + 0.02, 0.04, 0.028, fill=shoe)
    # pelvis / skirt
    if lt == "skirt":
        flare = 0.05 + pose.leg * (0.06 if side else 0.0)
        pt.poly([(-ww, 0.45), (ww, 0.45), (hw + flare, 0.70), (-hw - flare, 0.70)], lower_color)
    else:
        pt.poly([(-ww, 0.45), (ww, 0.45), (hw, 0.53), (-hw, 0.53)], lower_color)

    # arms: one behind (side view), torso, arms in front
    shoulder_y = 0.175
    if side:
        arms = [(0.0, shoulder_y, -pose.arm), (0.0, shoulder_y, pose.arm)]
    else:
        arms = [(-sw + 0.02, shoulder_y, 0.08 + pose.arm * 0.2), (sw - 0.02, shoulder_y, -0.08 - pose.arm * 0.2)]
    arm_pts = [_limb_points((x, y), -ang if not side else ang, 0.15, 0.14, 0.25 * f if side else 0.0)
               for x, y, ang in arms]
    if not side:  # arms hang outward from the shoulders
        arm_pts = [[(x + (i * 2 - 1) * 0.01 * j, y) for j, (x, y) in enumerate(pts)] for i, pts in enumerate(arm_pts)]

    def draw_arm(pts, shade):
        garment = _shade(s.upper, shade)
        pt.limb(pts, 0.046, _shade(skin, shade))
        pt.limb(pts if long_sleeves else _split_at(pts, 0.38), 0.05, garment)
        if ut == "jacket":  # dark cuffs
            pt.limb(_end_from(pts, 0.86), 0.056, _shade(s.upper, 0.55 * shade))
        hx, hy = pts[-1]
        pt.ellipse(hx, hy + 0.01, 0.022, 0.024, fill=_shade(skin, shade))

    bag_kind = a["bag"]
    if side:
        draw_arm(arm_pts[0], 0.8)
    # torso
    pt.poly([(-sw, shoulder_y - 0.01), (sw, shoulder_y - 0.01), (ww + 0.005, 0.45), (hw + 0.004, upper_bottom),
             (-hw - 0.004, upper_bottom), (-ww - 0.005, 0.45)], s.upper)
    pt.ellipse(-sw + 0.02, shoulder_y + 0.01, 0.03, 0.025, fill=s.upper)
    pt.ellipse(sw - 0.02, shoulder_y + 0.01, 0.03, 0.025, fill=s.upper)
    dark, light = _shade(s.upper, 0.6), _shade(s.upper, 1.3)
    if not back and not side:
        if ut == "shirt":
            pt.poly([(-0.035, 0.16), (0.0, 0.2), (0.035, 0.16), (0.0, 0.175)], light)
            for y in (0.23, 0.29, 0.35, 0.41):
                pt.ellipse(0.0, y, 0.005, 0.005, fill=dark)
        elif ut in ("jacket", "coat"):
            pt.limb([(0.0, 0.19), (0.0, upper_bottom - 0.01)], 0.01, dark)
            pt.poly([(-0.04, 0.165), (0.0, 0.25), (-0.015, 0.165)], dark)
            pt.poly([(0.04, 0.165), (0.0, 0.25), (0.015, 0.165)], dark)
        elif ut == "hoodie":
            pt.poly([(-0.05, 0.34), (0.05, 0.34), (0.06, 0.42), (-0.06, 0.42)], dark)
            pt.limb([(-0.015, 0.18), (-0.02, 0.26)], 0.006, light)
            pt.limb([(0.015, 0.18), (0.02, 0.26)], 0.006, light)
    if ut == "hoodie":  # hood behind the neck (front/side) or hanging on the back
        pt.ellipse(-0.03 * f if side else 0.0, 0.2 if back else 0.175, 0.055, 0.03, fill=s.upper if back else dark)
    if ut == "jacket":  # ribbed hem band and a stand-up collar
        pt.limb([(-hw, upper_bottom - 0.018), (hw, upper_bottom - 0.018)], 0.036, dark)
        pt.limb([(-0.04, 0.165), (0.04, 0.165)], 0.03, dark)
    elif ut in ("shirt", "coat"):  # hem
        pt.limb([(-hw, upper_bottom - 0.01), (hw, upper_bottom - 0.01)], 0.012, dark)
    if ut == "shirt":  # a light collar round the neck
        pt.limb([(-0.038, 0.168), (0.038, 0.168)], 0.022, light)

    long_hair = a["hair_length"] == "long"
    if back and long_hair:  # hair down the back, under a backpack
        pt.poly([(-0.058, 0.07), (0.058, 0.07), (0.068, 0.29), (-0.068, 0.29)], hair)
        pt.ellipse(0.0, 0.29, 0.068, 0.02, fill=hair)

    # bags that sit on the body
    if bag_kind == "backpack":
        if back:
            pt.poly([(-0.085, 0.2), (0.085, 0.2), (0.09, 0.43), (-0.09, 0.43)], s.bag)
            pt.poly([(-0.055, 0.32), (0.055, 0.32), (0.058, 0.41), (-0.058, 0.41)], _shade(s.bag, 0.75))
        elif side:
            x0 = -f * (sw + 0.005)
            pt.poly([(x0, 0.2), (x0 - f * 0.085, 0.21), (x0 - f * 0.09, 0.43), (x0, 0.43)], s.bag)
            pt.limb([(0.0, 0.17), (-0.015 * f, 0.33)], 0.018, _shade(s.bag, 0.8))
        else:
            for sx in (-1, 1):
                pt.limb([(sx * 0.06, 0.17), (sx * 0.075, 0.36)], 0.022, s.bag)
    elif bag_kind == "shoulder bag":
        side_x = 1 if not side else f
        pt.limb([(-sw * side_x + 0.02 * side_x, 0.17), (hw * side_x, 0.5)], 0.014, _shade(s.bag, 0.8))
        pt.poly([(side_x * (hw - 0.03), 0.46), (side_x * (hw + 0.06), 0.46),
                 (side_x * (hw + 0.06), 0.56), (side_x * (hw - 0.03), 0.56)], s.bag)

    # front arms
    if side:
        draw_arm(arm_pts[1], 1.0)
    else:
        draw_arm(arm_pts[0], 1.0)
        draw_arm(arm_pts[1], 1.0)
    if bag_kind == "handbag":
        hx, hy = arm_pts[1][-1]
        pt.d.arc([*pt.p(hx - 0.03, hy - 0.005), *pt.p(hx + 0.03, hy + 0.05)], 180, 360, fill=_shade(s.bag, 0.7),
                 width=pt.w(0.01))
        pt.poly([(hx - 0.045, hy + 0.03), (hx + 0.045, hy + 0.03), (hx + 0.055, hy + 0.1), (hx - 0.055, hy + 0.1)],
                s.bag)

    # neck, long hair, head
    hx = 0.008 * f if side else 0.0
    if long_hair and not back:
        if side:
            pt.poly([(hx - 0.03 * f, 0.03), (hx - 0.07 * f, 0.04), (hx - 0.075 * f, 0.27), (hx - 0.01 * f, 0.25)],
                    hair)
        else:
            pt.poly([(-0.062, 0.04), (0.062, 0.04), (0.06, 0.17), (-0.06, 0.17)], hair)
            for sx in (-1, 1):  # strands falling over the shoulders beside the neck
                pt.poly([(sx * 0.035, 0.1), (sx * 0.064, 0.05), (sx * 0.072, 0.26), (sx * 0.04, 0.25)], hair)
    pt.poly([(-0.022, 0.11), (0.022, 0.11), (0.024, 0.17), (-0.024, 0.17)], _shade(skin, 0.92))
    if back:
        pt.ellipse(0.0, 0.07, 0.055, 0.068, fill=hair)
        if not long_hair:
            pt.ellipse(0.0, 0.115, 0.042, 0.03, fill=hair)
    else:
        pt.ellipse(hx, 0.072, 0.05, 0.064, fill=skin)
        if side:
            pt.chord(hx, 0.068, 0.056, 0.07, 180, 360, fill=hair)
            pt.chord(hx - 0.02 * f, 0.075, 0.04, 0.06, 90 if f > 0 else -90, 270 if f > 0 else 90, fill=hair)
            pt.ellipse(hx + 0.03 * f, 0.068, 0.006, 0.006, fill=(30, 25, 25))
            pt.poly([(hx + 0.048 * f, 0.07), (hx + 0.062 * f, 0.085), (hx + 0.046 * f, 0.09)], skin)
        else:
            pt.chord(0.0, 0.06, 0.056, 0.062, 180, 360, fill=hair)
            sideburn = 0.1 if long_hair else 0.08
            for sx in (-1, 1):
                pt.poly([(sx * 0.056, 0.06), (sx * 0.042, 0.06), (sx * 0.046, sideburn), (sx * 0.056, sideburn)], hair)
            for ex in (-0.02, 0.02):
                pt.ellipse(ex, 0.072, 0.006, 0.006, fill=(30, 25, 25))
            pt.limb([(-0.012, 0.105), (0.012, 0.105)], 0.006, (150, 60, 60) if female else _shade(skin, 0.7))

    # accessories on the head
    if a["hat"] == "cap":
        pt.chord(hx, 0.05, 0.058, 0.052, 180, 360, fill=s.hat)
        if front:
            pt.ellipse(0.0, 0.05, 0.06, 0.014, fill=_shade(s.hat, 0.8))
        elif side:
            pt.poly([(hx, 0.045), (hx + 0.09 * f, 0.05), (hx + 0.085 * f, 0.058), (hx, 0.055)], _shade(s.hat, 0.8))
    elif a["hat"] == "beanie":
        pt.chord(hx, 0.058, 0.06, 0.066, 180, 360, fill=s.hat)
        pt.poly([(hx - 0.06, 0.045), (hx + 0.06, 0.045), (hx + 0.06, 0.062), (hx - 0.06, 0.062)], _shade(s.hat, 0.8))
    if a["glasses"] != "none" and not back:
        frame = (20, 20, 24)
        lens = frame if a["glasses"] == "sunglasses" else None
        eyes = (hx + 0.028 * f,) if side else (-0.02, 0.02)
        for ex in eyes:
            pt.ellipse(ex, 0.072, 0.016, 0.013, fill=lens, outline=frame, width=max(1, pt.w(0.005)))
        if side:
            pt.limb([(hx + 0.012 * f, 0.07), (hx - 0.02 * f, 0.068)], 0.005, frame)
        else:
            pt.limb([(-0.005, 0.07), (0.005, 0.07)], 0.005, frame)


def render(attrs: dict, style: Style, camera: int, rng: np.random.Generator, width: int = 128,
           height: int = 256) -> tuple[Image.Image, str]:
    """One crop of a person; returns (image, view). `rng` decides view, pose, scene and photometrics."""
    view = VIEWS[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    pose = _Pose(view=view, facing=1 if rng.random() < 0.5 else -1,
                 arm=float(rng.uniform(-0.45, 0.45)), leg=float(rng.uniform(0.05, 0.4)))
    img = _background(width, height, camera, rng)
    scale = rng.uniform(0.8, 0.94)
    ph = height * scale
    top = (height - ph) * rng.uniform(0.25, 0.75)
    cx = width / 2 + rng.uniform(-0.07, 0.07) * width
    draw = ImageDraw.Draw(img)
    _draw_person(_Painter(draw, cx, top, ph), attrs, style, pose)
    if rng.random() < 0.15:  # partial occlusion: a pole or a low object in front
        if rng.random() < 0.5:
            x = int(rng.integers(0, width))
            draw.rectangle([x, 0, x + int(rng.integers(5, 12)), height], fill=_muted(rng, (90, 90, 90), 30))
        else:
            y = int(height * rng.uniform(0.8, 0.9))
            draw.rectangle([int(rng.integers(-40, 40)), y, width + 10, height], fill=_muted(rng, (110, 110, 110), 50))
    cam_rng = np.random.default_rng([992, camera])
    gain = (1.0 + cam_rng.uniform(-0.06, 0.06, 3)) * rng.uniform(0.82, 1.12) * (1 + rng.uniform(-0.03, 0.03, 3))
    g0, g1, g2 = gain.tolist()
    img = img.convert("RGB", matrix=(g0, 0, 0, 0, 0, g1, 0, 0, 0, 0, g2, 0))  # lighting / colour cast
    if rng.random() < 0.3:  # defocus / low resolution
        f = float(rng.uniform(0.45, 0.8))
        img = img.resize((max(8, int(width * f)), max(8, int(height * f))), Image.Resampling.BILINEAR).resize(
            (width, height), Image.Resampling.BILINEAR)
    return img, view
