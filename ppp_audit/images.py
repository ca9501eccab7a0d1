"""Image sources and the windows the padding-free reference needs (SPEC §2 ``images``, §3.1).

Every source hands out square *windows* of real pixels, size ``S + 2m``, as float tensors in [0, 1]; the engine
takes the centre ``S x S`` crop itself, so the surrounding context is always real image content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .errors import ImageSourceError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"})


class ImageSource(Protocol):
    """Anything that yields windows by index."""

    def window(self, index: int, size: int) -> Tensor:
        """The ``index``-th window, shape (3, size, size), float32 in [0, 1]."""
        ...

    def available(self) -> int | None:
        """How many distinct windows exist (``None``: unlimited)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description for the report."""
        ...


@dataclass(frozen=True)
class DeadLeavesSource:
    """Procedural dead-leaves photos: occluding discs with a scale-invariant size law plus 1/f texture.

    Deterministic per ``(seed, index)``, renderable at any size, and spatially stationary (disc centres are uniform
    over an area larger than the window), so it has no centre bias. Needs no files and no network.

    Args:
        seed: Base seed; window ``i`` uses ``(seed, i)``.
        num_discs: Discs per window.
    """

    seed: int = 0
    num_discs: int = 1200

    def available(self) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": "dead-leaves", "seed": self.seed, "num_discs": self.num_discs}

    def window(self, index: int, size: int) -> Tensor:
        rng = np.random.default_rng([self.seed, index])
        image = np.empty((size, size, 3), dtype=np.float32)
        image[:] = rng.uniform(0.2, 0.8, size=3)
        r_min, r_max = max(1.5, size / 96), size / 3
        # p(r) ~ r^-3 is the scale-invariant law of natural-image occluders; sample it by inverting its CDF.
        u = rng.uniform(size=self.num_discs)
        radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
        centres = rng.uniform(-r_max, size + r_max, size=(self.num_discs, 2))
        luminance = rng.beta(2.0, 2.0, size=self.num_discs)
        tint = rng.normal(0.0, 0.15, size=(self.num_discs, 3))
        colours = np.clip(luminance[:, None] * (1.0 + tint), 0.0, 1.0).astype(np.float32)
        # Large discs first, small on top: the same picture as a random order, with far fewer hidden discs drawn.
        for k in np.argsort(-radii):
            cy, cx, r = centres[k, 0], centres[k, 1], radii[k]
            y0, y1 = max(int(cy - r), 0), min(int(math.ceil(cy + r)) + 1, size)
            x0, x1 = max(int(cx - r), 0), min(int(math.ceil(cx + r)) + 1, size)
            if y0 >= y1 or x0 >= x1:
                continue
            yy, xx = np.ogrid[y0:y1, x0:x1]
            # Anti-aliased edge: coverage ramps over one pixel, like a lens would blur it.
            alpha = np.clip(r + 0.5 - np.sqrt((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2), 0.0, 1.0)[..., None]
            patch = image[y0:y1, x0:x1]
            patch += alpha.astype(np.float32) * (colours[k] - patch)
        image += _pink_noise(rng, size)[..., None] * 0.06
        return torch.from_numpy(np.clip(image, 0.0, 1.0)).permute(2, 0, 1).contiguous()


def _pink_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit-variance 1/f noise, cut from a field twice as large so it does not wrap around."""
    big = 2 * size
    fy = np.fft.fftfreq(big)[:, None]
    fx = np.fft.rfftfreq(big)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) / radius
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(big, big))[:size, :size]
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class FolderSource:
    """Images from a folder (recursive), each resized so its short side is at least the window, centre window.

    Args:
        root: The folder.
        resize_short: Short side to resize to before taking the window (the model's ``S / crop_pct``); the window
            size wins if larger. Images whose short side is below the window are refused, not upscaled.
    """

    root: Path
    resize_short: int = 0

    def __post_init__(self) -> None:
        root = Path(self.root)
        if not root.is_dir():
            raise ImageSourceError(f"image folder '{root}' does not exist", "pass an existing folder to --images")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ImageSourceError(
                f"image folder '{root}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})",
                "point --images at a folder of photos, or leave it out to use the built-in images",
            )
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "_files", files)

    @property
    def files(self) -> list[Path]:
        return self._files  # type: ignore[attr-defined]

    def available(self) -> int | None:
        return len(self.files)

    def describe(self) -> dict[str, Any]:
        return {"kind": "folder", "path": str(self.root), "num_files": len(self.files)}

    def window(self, index: int, size: int) -> Tensor:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

        path = self.files[index % len(self.files)]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageSourceError(f"cannot read image '{path}': {exc}", "remove or fix the file") from exc
        short = min(img.size)
        if short < size:
            raise ImageSourceError(
                f"image '{path}' is {img.size[0]}x{img.size[1]}, smaller than the {size}x{size} window",
                "use larger images, or a smaller --input-size / --margin",
            )
        tensor = pil_to_tensor(img).float().div_(255.0)
        target = max(size, min(short, self.resize_short or short))
        if target != short:
            tensor = resize(tensor, [target], antialias=True)
        return center_crop(tensor, [size, size]).clamp_(0.0, 1.0)


class WindowDataset(Dataset):
    """Windows of one size from a source, for a ``DataLoader``; items are ``(global index, window)``.

    Args:
        source: The image source.
        indices: Which windows (a range for one process; a strided slice of it per rank when distributed).
        size: Window side in pixels.
    """

    def __init__(self, source: ImageSource, indices: range, size: int) -> None:
        self.source, self.indices, self.size = source, indices, size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, Tensor]:
        index = self.indices[position]
        return index, self.source.window(index, self.size)
