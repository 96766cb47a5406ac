"""A procedural image world with known factors: ``synthetic:shapes[:train|test]``.

Every image is a dark, slightly noisy 32x32 canvas with 1 to 3 objects. Each object has one value of
each *factor family*: a shape (disc, square, triangle, cross, ring, and two compositional objects: a
``house`` = triangle roof on a square, a ``target`` = ring around a disc), a colour (red, green, blue,
yellow), a size (small, large), a texture (solid, striped) and a position (left/right, top/bottom
half, from its centre). Later objects occlude earlier ones; every object's *visible* pixel mask is
kept, so the ground truth is exact at the pixel, patch and image level.

Image ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split_code, i])``: any image can
be regenerated alone, in any order, and the splits never share a draw. Nothing is downloaded.

``ShapesWorld(split)`` is an image source (``world[i] -> (PIL RGB image, label)`` with ``label`` the
shape of the object that covers most pixels) and adds the ground truth: :meth:`ShapesWorld.scene`,
:meth:`~ShapesWorld.pixel_masks` ``(F, H, W)``, :meth:`~ShapesWorld.image_factors` ``(F,)`` and
:meth:`~ShapesWorld.patch_factors` ``(n_patches, F)`` for ``F = len(FACTOR_NAMES)`` factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vision_sae_lens.errors import ConfigError, ImageInputError, InputTypeError, OutOfRangeError

SHAPES = ("disc", "square", "triangle", "cross", "ring", "house", "target")
COLORS = {
    "red": (220, 50, 50),
    "green": (50, 200, 70),
    "blue": (60, 90, 235),
    "yellow": (235, 210, 50),
}
SIZES = {"small": (3.5, 5.0), "large": (6.5, 9.0)}
"""Object radius range in pixels, per size (on the 32 px canvas)."""
TEXTURES = ("solid", "striped")
FAMILIES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "size": tuple(SIZES),
    "texture": TEXTURES,
    "x": ("left", "right"),
    "y": ("top", "bottom"),
}
FACTOR_NAMES: tuple[str, ...] = tuple(f"{fam}={v}" for fam, values in FAMILIES.items() for v in values)
"""Every factor as ``family=value``; the column order of all factor arrays."""
FACTOR_FAMILY: tuple[str, ...] = tuple(name.split("=")[0] for name in FACTOR_NAMES)
SPLITS = {"train": (0, 4000), "test": (1, 1000)}
"""Split name -> (code mixed into the seed, default number of images)."""
IMAGE_SIZE = 32
BACKGROUND = 40
MAX_OBJECTS = 3


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene."""

    shape: str
    """One of :data:`SHAPES`."""
    color: str
    """One of :data:`COLORS`."""
    size: str
    """``small`` or ``large``."""
    texture: str
    """``solid`` or ``striped`` (horizontal stripes of 2 px)."""
    cx: float
    """Centre column in pixels."""
    cy: float
    """Centre row in pixels."""
    radius: float
    """Half extent in pixels."""

    @property
    def factors(self) -> tuple[str, ...]:
        """Its factor names, one per family."""
        x = "left" if self.cx < IMAGE_SIZE / 2 else "right"
        y = "top" if self.cy < IMAGE_SIZE / 2 else "bottom"
        return (
            f"shape={self.shape}",
            f"color={self.color}",
            f"size={self.size}",
            f"texture={self.texture}",
            f"x={x}",
            f"y={y}",
        )


@dataclass(frozen=True)
class Scene:
    """A rendered image with its ground truth."""

    image_hw3: np.ndarray
    """uint8 RGB pixels."""
    owner_hw: np.ndarray
    """int8: index of the object visible at each pixel, -1 for background."""
    objects: tuple[ShapeObject, ...]
    """The objects, in drawing order (later ones occlude earlier ones)."""

    def factors_of(self) -> np.ndarray:
        """``(n_objects, F)`` bool: which factors each object carries."""
        out = np.zeros((len(self.objects), len(FACTOR_NAMES)), dtype=bool)
        for o, obj in enumerate(self.objects):
            out[o, [FACTOR_INDEX[f] for f in obj.factors]] = True
        return out


FACTOR_INDEX = {name: i for i, name in enumerate(FACTOR_NAMES)}


class ShapesWorld:
    """The images of one split of the shapes world, with their masks and factor labels."""

    label_names: list[str] = list(SHAPES)
    labels = None  # an image's label (its most visible shape) is known only once it is rendered

    def __init__(self, split: str = "train", *, n_images: int | None = None, seed: int = 0) -> None:
        if split not in SPLITS:
            raise ImageInputError(
                f"unknown synthetic split {split!r}; use 'synthetic:shapes:train' or 'synthetic:shapes:test'"
            )
        code, default_n = SPLITS[split]
        n = default_n if n_images is None else int(n_images)
        if n < 1:
            raise ImageInputError(f"n_images must be >= 1, got {n_images}")
        self.split, self.seed, self.n_images, self._code = split, int(seed), n, code
        self.factor_names: list[str] = list(FACTOR_NAMES)

    def __len__(self) -> int:
        return self.n_images

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        scene = self.scene(i)
        visible = [(scene.owner_hw == o).sum() for o in range(len(scene.objects))]
        main = scene.objects[int(np.argmax(visible))]
        return Image.fromarray(scene.image_hw3, mode="RGB"), SHAPES.index(main.shape)

    def name_of(self, i: int) -> str:
        """``shapes-<split>-<i>``."""
        return f"shapes-{self.split}-{i}"

    @property
    def description(self) -> dict[str, Any]:
        return {
            "kind": "synthetic",
            "name": "shapes",
            "split": self.split,
            "count": self.n_images,
            "seed": self.seed,
            "generator": "vision_sae_lens.data.synthetic/1",
        }

    # ------------------------------------------------------------------------------ ground truth
    def scene(self, i: int) -> Scene:
        """Render image ``i`` (deterministic in ``(seed, split, i)``)."""
        if not isinstance(i, (int, np.integer)):
            raise InputTypeError(f"synthetic images are indexed by int, got {type(i).__name__}")
        if not 0 <= i < self.n_images:
            raise OutOfRangeError(
                f"image {i} out of range for the {self.n_images} images of split {self.split!r}"
            )
        rng = np.random.default_rng([self.seed, self._code, int(i)])
        return render_scene(rng)

    def pixel_masks(self, i: int) -> np.ndarray:
        """``(F, H, W)`` bool: pixels of the visible objects carrying each factor."""
        scene = self.scene(i)
        return _pixel_masks(scene)

    def image_factors(self, i: int) -> np.ndarray:
        """``(F,)`` bool: factors carried by at least one object with a visible pixel."""
        return np.asarray(self.pixel_masks(i).any(axis=(1, 2)))

    def patch_factors(self, i: int, *, patch_size: int, min_coverage: float = 0.25) -> np.ndarray:
        """``(n_patches, F)`` bool in row-major patch order: a patch carries a factor when at least
        ``min_coverage`` of its pixels belong to objects carrying it."""
        return patch_coverage(self.pixel_masks(i), patch_size=patch_size) >= min_coverage


def render_scene(rng: np.random.Generator) -> Scene:
    """Draw and render one scene from ``rng``."""
    size = IMAGE_SIZE
    n_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    objects: list[ShapeObject] = []
    for _ in range(n_objects):
        for _attempt in range(20):
            obj = _draw_object(rng)
            # Keep objects mostly apart so occlusion never hides one completely.
            if all(np.hypot(obj.cx - o.cx, obj.cy - o.cy) >= 0.8 * (obj.radius + o.radius) for o in objects):
                objects.append(obj)
                break
    noise = rng.integers(-8, 9, size=(size, size, 1))
    image = np.clip(BACKGROUND + noise, 0, 255).repeat(3, axis=2).astype(np.float64)
    owner = np.full((size, size), -1, dtype=np.int8)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for o, obj in enumerate(objects):
        mask = _raster(obj, xx, yy)
        colour = np.asarray(COLORS[obj.color], dtype=np.float64)
        paint = np.broadcast_to(colour, image.shape).copy()
        if obj.texture == "striped":
            dark = (np.floor(yy) // 2) % 2 == 1
            paint[dark] *= 0.4
        image[mask] = paint[mask]
        owner[mask] = o
    return Scene(image.round().astype(np.uint8), owner, tuple(objects))


def patch_coverage(masks_fhw: np.ndarray, *, patch_size: int) -> np.ndarray:
    """``(n_patches, F)`` float: share of each patch's pixels inside each mask (row-major patches)."""
    f, h, w = masks_fhw.shape
    if h % patch_size or w % patch_size:
        raise ConfigError(f"patch size {patch_size} does not divide the {h}x{w} masks")
    gh, gw = h // patch_size, w // patch_size
    blocks = masks_fhw.reshape(f, gh, patch_size, gw, patch_size).mean(axis=(2, 4))
    return blocks.reshape(f, gh * gw).T


def _pixel_masks(scene: Scene) -> np.ndarray:
    factors_of = scene.factors_of()
    masks = np.zeros((len(FACTOR_NAMES), *scene.owner_hw.shape), dtype=bool)
    for o in range(len(scene.objects)):
        masks[factors_of[o]] |= scene.owner_hw == o
    return masks


def _draw_object(rng: np.random.Generator) -> ShapeObject:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = tuple(COLORS)[int(rng.integers(len(COLORS)))]
    size = tuple(SIZES)[int(rng.integers(len(SIZES)))]
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    lo, hi = SIZES[size]
    radius = float(rng.uniform(lo, hi))
    margin = radius + 0.5
    cx, cy = (float(v) for v in rng.uniform(margin, IMAGE_SIZE - margin, size=2))
    return ShapeObject(shape, color, size, texture, cx, cy, radius)


def _raster(obj: ShapeObject, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    dx, dy, r = xx - obj.cx, yy - obj.cy, obj.radius
    d = np.hypot(dx, dy)
    if obj.shape == "disc":
        return d <= r
    if obj.shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if obj.shape == "triangle":
        return (dy >= -r) & (dy <= 0.7 * r) & (np.abs(dx) <= (dy + r) / 1.7)
    if obj.shape == "cross":
        return ((np.abs(dx) <= 0.3 * r) & (np.abs(dy) <= r)) | ((np.abs(dy) <= 0.3 * r) & (np.abs(dx) <= r))
    if obj.shape == "ring":
        return (d <= r) & (d >= 0.55 * r)
    if obj.shape == "house":
        body = (np.abs(dx) <= 0.7 * r) & (dy >= 0) & (dy <= 0.9 * r)
        roof = (dy < 0) & (dy >= -r) & (np.abs(dx) <= 0.9 * (dy + r))
        return body | roof
    if obj.shape == "target":
        return ((d <= r) & (d >= 0.65 * r)) | (d <= 0.3 * r)
    raise AssertionError(obj.shape)


def open_synthetic(spec: str) -> ShapesWorld:
    """``synthetic:shapes[:train|test]`` -> the world's split (train by default)."""
    name, _, split = spec.removeprefix("synthetic:").partition(":")
    if name != "shapes":
        raise ImageInputError(
            f"unknown synthetic image set {spec!r}; the generated one is 'synthetic:shapes[:train|test]'"
        )
    return ShapesWorld(split or "train")
