"""Image sources and the windows the padding-free reference needs (docs/images.md; the reference: docs/metrics.md).

Every source hands out square *windows* of real pixels, size ``S + 2m``, as float tensors in [0, 1]; the engine
takes the centre ``S x S`` crop itself, so the surrounding context is always real image content. Sources: the built-in
:class:`DeadLeavesSource`, a :class:`FolderSource` (``--images DIR``) and a :class:`HFDatasetSource`
(``--images hfds/NAME``, optional ``datasets`` extra); :func:`image_source` picks one from what ``--images`` says.
:func:`image_loader` makes every batch loader (audit windows, fine-tuning crops), with or without worker processes.
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, NamedTuple, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from .config import HFDS_PREFIX, RENDERER, parse_hfds
from .device_images import (
    EXIF_ORIENTATION_TAG, TRANSPOSED_ORIENTATIONS, decode_jpegs, fit_window, is_jpeg, orient, render_dead_leaves,
    scaled_size,
)
from .errors import ImageFolderNotFoundError, ImageSourceError, PPPAuditError, one_line
from .report import SKIPPED_LISTED, SkippedImage

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"})


class ImageSource(Protocol):
    """Anything that yields windows by index.

    Optional methods: ``windows(indices, size, device)`` makes a batch on a device (:func:`read_windows`), and
    ``header(index)`` gives an image's :class:`ImageHeader` (:func:`source_header`), with which a sample names the
    images too small for the window and counts those turned upright by their EXIF orientation, and crops can be
    tiled inside photos (:func:`sample_photos`; their windows are then ``(height, width)`` tiles).
    """

    def window(self, index: int, size: int) -> Tensor:
        """The ``index``-th window, shape (3, size, size), float32 in [0, 1]."""
        ...

    def available(self) -> int | None:
        """How many distinct windows exist (``None``: unlimited)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description for the report."""
        ...

    def fits(self, index: int, size: int) -> bool:
        """Whether the ``index``-th image can give a ``size`` window (file sources: its short side, from the header).

        Raises:
            ImageSourceError: The image's header cannot be read (made by ``ImageSourceError.unreadable``, so that
                sampling can skip it and say why).
        """
        ...


def source_header(source: ImageSource, index: int) -> ImageHeader | None:
    """The ``index``-th image's header, for sources that read one (an optional ``header(index)`` method: file-backed
    sources, and the wrappers of one); ``None`` for the others (the built-in images, custom sources).

    Raises:
        ImageSourceError: The header cannot be read (as ``fits`` raises it).
    """
    header = getattr(source, "header", None)
    return header(index) if header is not None else None


@dataclass(frozen=True)
class DeadLeavesSource:
    """Procedural dead-leaves photos: occluding discs with a scale-invariant size law plus 1/f texture.

    Deterministic per ``(seed, index)``, renderable at any size, and spatially stationary (disc centres are uniform
    over an area larger than the window), so it has no centre bias. With a ``scale`` the picture's statistics are
    fixed in pixels: disc sizes, disc density and texture are set by ``scale`` alone, so a crop of ``scale`` px looks
    the same, statistically, whatever the window it is cut from (the margin must not change what the crop sees).
    Without one they are set relative to each window's own size. Needs no files and no network.

    One renderer draws them, on every device (:func:`~ppp_audit.device_images.render_dead_leaves`: tensor ops, random
    numbers that are the same bits on every device), so window ``i`` of a seed is the same picture on the host, one at
    a time, and in a batch on any device, to float rounding (SPEC §3.5; the report's ``data.renderer``). Until #27 the
    host drew them with NumPy: different pictures of the same statistics, which gave other numbers by content.

    Args:
        seed: Base seed; window ``i`` uses ``(seed, i)``.
        num_discs: Discs per picture of ``scale`` px (per window without a scale), plus its border of the largest
            disc radius.
        scale: The side in px (the audit's crop) the picture's statistics are set for; ``None``: the window's side.
        compile: A ``torch.compile`` backend for the renderer (how it runs, not what it draws).
        periodic: Each picture periodic, of period its side (the canvases of :mod:`ppp_audit.canvas`).
    """

    seed: int = 0
    num_discs: int = 1200
    scale: int | None = None
    compile: str | None = field(default=None, compare=False)
    periodic: bool = False

    def available(self) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": "dead-leaves", "seed": self.seed, "num_discs": self.num_discs,
                **({"scale": self.scale} if self.scale else {}), **({"periodic": True} if self.periodic else {}),
                "renderer": RENDERER}

    def fits(self, index: int, size: int) -> bool:
        return True

    def windows(self, indices: Sequence[int], size: int, device: torch.device) -> Tensor:
        """Windows ``indices`` as one batch, drawn on ``device``."""
        return render_dead_leaves(self.seed, indices, size, scale=self.scale, num_discs=self.num_discs, device=device,
                                  compile=self.compile, periodic=self.periodic)

    def window(self, index: int, size: int) -> Tensor:
        """Window ``index`` alone, drawn on the host: the same picture as in any batch (bit for bit on the CPU)."""
        return self.windows([index], size, torch.device("cpu"))[0]


class ImageHeader(NamedTuple):
    """What an image file's header says, as the audit reads the image: upright (its EXIF orientation applied)."""

    name: str
    """The image as messages name it."""
    width: int
    """Width upright: the stored height for a quarter-turned phone photo."""
    height: int
    """Height upright."""
    orientation: int = 1
    """The EXIF orientation turned (1: none, the pixels are upright as stored)."""


def image_header(file: str | Path | IO[bytes], name: str) -> ImageHeader:
    """An image file's header: its upright size and EXIF orientation, without decoding the pixels.

    Raises:
        ImageSourceError: The header cannot be read (not an image, too many pixels), naming the image ``name`` as
            :func:`load_window` would.
    """
    with open_image(file, name) as img:
        return header_of(img, name)


def header_of(img: Any, name: str) -> ImageHeader:
    """The :class:`ImageHeader` of an opened PIL image."""
    orientation = exif_orientation(img)
    width, height = img.size
    if orientation in TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(name, width, height, orientation)


def exif_orientation(img: Any) -> int:
    """An opened PIL image's EXIF orientation (1..8; 1 when it has none), as ``PIL.ImageOps.exif_transpose`` reads
    it. A phone stores a photo as its sensor saw it and this tag says how to turn it upright; read without it, a
    portrait photo would be measured on its side, its top border profile reported as its left one."""
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block leaves the pixels readable: show them as stored
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
IMAGE_MODES = ("1", "L", "P", "RGB", "CMYK", "YCbCr", "HSV", *sorted(_ALPHA_MODES), *sorted(_SIXTEEN_BIT_MODES), "I",
               "F")
"""The PIL modes :func:`load_window` reads; any other is refused with an :class:`ImageSourceError`."""


@contextlib.contextmanager
def open_image(file: str | Path | IO[bytes], name: str) -> Iterator[Any]:
    """A PIL image, opened (header only) with every failure turned into one :class:`ImageSourceError` naming ``name``
    and the cause: not an image, or more pixels than PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``,
    which PIL only warns about below twice the limit; it is a hard limit here, as a window needs a few hundred
    pixels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(file)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(pixels.group(1)):,} pixels" if pixels else "its size"
        raise ImageSourceError.unreadable(
            name, f"too many pixels ({count}, over PIL's limit of {Image.MAX_IMAGE_PIXELS:,}; a possible "
            "decompression bomb)", "downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it") from None
    except UnidentifiedImageError:
        raise ImageSourceError.unreadable(name, "not an image (PIL cannot identify its format)") from None
    except OSError as exc:
        raise ImageSourceError.unreadable(name, one_line(exc)) from None
    with img:
        yield img


def image_array(img: Any, name: str) -> Tensor:
    """An opened PIL image as a float32 tensor (3, H, W) in [0, 1], whatever its mode.

    8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``HSV``) are converted to RGB by PIL and divided
    by 255. 16-bit greyscale (``I;16*``) is divided by 65535, not clipped to 8 bits; ``I`` (32-bit integers, how
    older PIL versions open 16-bit PNGs) is read as 16-bit and refused if a value lies outside 0..65535; ``F``
    (32-bit float) is used as it is and refused outside [0, 1]. Transparency, an alpha channel (``LA``, ``PA``,
    ``RGBA``) or a transparent palette index or colour, is composited on black: a transparent pixel is black, whatever
    colour the file stores under it.

    Raises:
        ImageSourceError: The mode is not one of :data:`IMAGE_MODES`, a value is out of range, or the file cannot
            be decoded.
    """
    from torchvision.transforms.functional import pil_to_tensor

    mode = img.mode
    if mode not in IMAGE_MODES:
        raise ImageSourceError.unreadable(
            name, f"PIL mode '{mode}' is not supported",
            f"save it as 8- or 16-bit RGB or greyscale (modes read: {', '.join(IMAGE_MODES)})")
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure (truncated, corrupt) is the file's fault
        raise ImageSourceError.unreadable(name, one_line(exc)) from None
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _deep_greyscale(img, name)
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = pil_to_tensor(img.convert("RGBA")).float()
        return (rgba[:3] * rgba[3:]).div_(255.0 * 255.0)
    return pil_to_tensor(img.convert("RGB")).float().div_(255.0)


def _deep_greyscale(img: Any, name: str) -> Tensor:
    """A 16-bit, 32-bit integer or float greyscale image, scaled by its bit depth (see :func:`image_array`)."""
    values = np.asarray(img)
    if img.mode == "F":
        if not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
            raise ImageSourceError.unreadable(
                name, "a float image with values outside [0, 1] "
                f"(from {float(np.nanmin(values)):.4g} to {float(np.nanmax(values)):.4g})",
                "scale it to [0, 1], or save it as an 8- or 16-bit image")
        grey = values.astype(np.float32)
    else:
        if img.mode == "I" and (values.min() < 0 or values.max() > 65535):
            raise ImageSourceError.unreadable(
                name, "a 32-bit integer image with values outside 0..65535 "
                f"(from {int(values.min())} to {int(values.max())}), so its bit depth is unknown",
                "save it as an 8- or 16-bit image")
        grey = values.astype(np.float32) / np.float32(65535.0)
    transparent = img.info.get("transparency")
    if isinstance(transparent, (int, float)):
        grey = np.where(values == transparent, np.float32(0.0), grey)
    return torch.from_numpy(np.ascontiguousarray(grey)).unsqueeze(0).expand(3, -1, -1).contiguous()


def check_window_fits(name: str, width: int, height: int, size: int | tuple[int, int]) -> None:
    """Refuse an image (its size at the audit's scale) smaller than the window (images are never upscaled).

    Raises:
        ImageSourceError: The image is narrower or lower than the window (``size`` square, or ``(height, width)``).
    """
    rows, cols = (size, size) if isinstance(size, int) else size
    if width < cols or height < rows:
        raise ImageSourceError(
            f"image '{name}' is {width}x{height}, smaller than the {cols}x{rows} window",
            "use larger images, or a smaller --input-size / --margin",
        )


def load_window(file: str | Path | IO[bytes], name: str, size: int | tuple[int, int], scale: float = 1.0) -> Tensor:
    """The centre window of an image file: what every file-backed source hands out.

    The image is read as RGB in [0, 1] (:func:`image_array`: every PIL mode scaled by its bit depth, transparency
    composited on black), turned upright by its EXIF orientation (:func:`~ppp_audit.device_images.orient`),
    resized (antialiased) by ``scale`` (the photos' one scale, whatever the window), and centre-cropped. Images
    smaller than the window at that scale are refused, never upscaled.

    Args:
        file: A path or an open binary file.
        name: How errors name the image (a path, ``row 3 of hfds/beans (train)``).
        size: Window side in pixels, or ``(height, width)`` (the tiles of :mod:`ppp_audit.canvas`).
        scale: The photos' scale (``1``: the image's own pixels).

    Raises:
        ImageSourceError: The file is not an image, cannot be decoded, has too many pixels or an unsupported mode,
            or is smaller than the window.
    """
    with open_image(file, name) as img:
        header = scaled_header(header_of(img, name), scale)
        check_window_fits(name, header.width, header.height, size)
        tensor = image_array(img, name)
    return fit_window(orient(tensor, header.orientation), size, scale)


def scaled_header(header: ImageHeader, scale: float) -> ImageHeader:
    """``header`` with the image's size at the photos' ``scale`` (:func:`~ppp_audit.device_images.scaled_size`)."""
    height, width = scaled_size(header.height, header.width, scale)
    return header._replace(width=width, height=height)


def decode_windows(files: Sequence[tuple[str | Path | IO[bytes], str]], size: int | tuple[int, int], scale: float,
                   device: torch.device) -> Tensor:
    """Windows of encoded images as one batch on ``device``, cut as :func:`load_window` cuts them.

    JPEG files (known by their bytes) are decoded on ``device`` in one call (:func:`~ppp_audit.device_images.
    decode_jpegs`: nvJPEG on CUDA), turned upright by their EXIF orientation (read from the header on the host:
    torchvision applies it on the CPU only), then resized and centre-cropped there; other formats, and JPEGs that
    decoder refuses (CMYK, corrupt), are read by :func:`load_window` (PIL). On the CPU the pixels equal PIL's
    (tests/test_device_images.py); nvJPEG may round its IDCT and colour conversion differently.

    Args:
        files: ``(path or open binary file, name)`` per image; names are what errors say.
        size: Window side, or ``(height, width)``.
        scale: As in :func:`load_window`.
        device: Where to decode.

    Raises:
        ImageSourceError: The first image that cannot be read, or that is smaller than the window.
    """
    encoded = []
    for file, name in files:
        try:
            data = file.read() if hasattr(file, "read") else Path(file).read_bytes()
        except OSError as exc:
            raise ImageSourceError.unreadable(name, one_line(exc)) from None
        encoded.append(data)
    jpeg = [k for k, data in enumerate(encoded) if is_jpeg(data)]
    decoded = dict(zip(jpeg, decode_jpegs([encoded[k] for k in jpeg], device))) if jpeg else {}
    windows = []
    for k, (_, name) in enumerate(files):
        pixels = decoded.get(k)
        if pixels is None:  # not a JPEG, or one the device decoder refuses: PIL reads it (or says why it cannot)
            windows.append(load_window(io.BytesIO(encoded[k]), name, size, scale).to(device))
            continue
        header = image_header(io.BytesIO(encoded[k]), name)
        pixels = orient(pixels, header.orientation)
        height, width = scaled_size(pixels.shape[-2], pixels.shape[-1], scale)
        check_window_fits(name, width, height, size)
        windows.append(fit_window(pixels.float().div_(255.0), size, scale))
    return torch.stack(windows)


def read_windows(source: ImageSource, indices: Sequence[int], size: int | tuple[int, int],
                 device: torch.device) -> Tensor:
    """Windows ``indices`` of ``source`` as one batch on ``device``: made there by sources that can (their
    ``windows`` method: the built-in images, JPEG decoding), read one by one and moved otherwise."""
    if hasattr(source, "windows"):
        return source.windows(indices, size, device)
    return stack_windows(source, indices, size, device)


def stack_windows(source: ImageSource, indices: Sequence[int], size: int | tuple[int, int],
                  device: torch.device) -> Tensor:
    """Windows ``indices`` of ``source`` read one by one on the host (``window``), as one batch moved to ``device``."""
    return torch.stack([source.window(index, size) for index in indices]).to(device)


@dataclass(frozen=True)
class FolderSource:
    """Images from a folder (recursive), each resized by the one photo ``scale``, centre window.

    Args:
        root: The folder.
        scale: The photos' scale (``1``: their own pixels), the same for every window: the content a crop shows does
            not depend on the margin or the model. Images smaller than a window at this scale are refused, never
            upscaled.
    """

    root: Path
    scale: float = 1.0

    def __post_init__(self) -> None:
        root = Path(self.root)
        if not root.is_dir():
            raise ImageFolderNotFoundError(f"image folder '{root}' does not exist",
                                           "pass an existing folder to --images")
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
        return {"kind": "folder", "path": str(self.root), "num_files": len(self.files), "scale": self.scale}

    def window(self, index: int, size: int | tuple[int, int]) -> Tensor:
        path = self.files[index % len(self.files)]
        return load_window(path, str(path), size, self.scale)

    def windows(self, indices: Sequence[int], size: int | tuple[int, int], device: torch.device) -> Tensor:
        """Windows ``indices`` as one batch on ``device``, JPEG files decoded there (:func:`decode_windows`)."""
        return decode_windows([(path, str(path)) for path in (self.files[i % len(self.files)] for i in indices)],
                              size, self.scale, device)

    def fits(self, index: int, size: int) -> bool:
        return min(self.header(index)[1:3]) >= size

    def header(self, index: int) -> ImageHeader:
        """The ``index``-th image's header (:func:`image_header`), its size at the photos' scale."""
        path = self.files[index % len(self.files)]
        return scaled_header(image_header(path, str(path)), self.scale)

    def classes(self) -> tuple[list[int], list[str]]:
        """Class index of every file of a class-per-folder tree, and the class names (``--labels folder``).

        The class of ``ROOT/NAME/.../file.png`` is ``NAME``. Indices follow torchvision's ``ImageFolder`` (class names
        in sorted order, so an ImageNet tree of WordNet-id folders gets the ImageNet indices), except that when every
        name is a decimal number the number itself is the index (``ROOT/281/cat.png`` is class 281).

        Raises:
            ImageSourceError: A file is not inside a class folder.
        """
        names = []
        for path in self.files:
            parts = path.relative_to(self.root).parts
            if len(parts) < 2:
                raise ImageSourceError(
                    f"--labels folder: '{path}' is not inside a class folder",
                    "arrange images as ROOT/CLASS/image.png (one folder per class)",
                )
            names.append(parts[0])
        classes = sorted(set(names))
        if all(name.isdigit() for name in classes):
            return [int(name) for name in names], classes
        rank = {name: i for i, name in enumerate(classes)}
        return [rank[name] for name in names], classes


@dataclass(frozen=True)
class HFDatasetSource:
    """Images from one split of a Hugging Face dataset (``--images hfds/NAME``), cut as :class:`FolderSource` cuts.

    ``NAME`` is anything ``datasets.load_dataset`` accepts: a Hub dataset id (``beans``, ``owner/name``) or a local
    folder (parquet files, an ``imagefolder`` layout of class folders); a folder written by ``save_to_disk`` is read
    with ``datasets.load_from_disk``. Window ``i`` is row ``i`` (modulo the row count) of the first column whose feature
    is ``datasets.Image``, resized and centre-cropped by :func:`load_window`. Needs the optional ``datasets`` package
    (``pip install 'ppp-audit[hf]'``), imported only here.

    Trade-off: the split is a map-style, memory-mapped ``datasets.Dataset``, so any row can be read at random (the
    engine, the fine-tune held-out split and each DataLoader worker pick rows by index, and the object pickles as a
    reference to its Arrow files). The price is that the first use of a Hub dataset downloads and converts its whole
    configuration (``load_dataset`` prepares every split) into the ``datasets`` cache, even when N is small; later
    runs, offline ones too, read the cache. Streaming would fetch only N rows but has no random access. A sliced split
    (``--images-split "train[:256]"``) limits the rows used, not the download.

    Args:
        name: Hub dataset id or local folder.
        split: Split to read; ``datasets`` split syntax (``train[:256]``, ``train+validation``) works too.
        config: Dataset configuration (``hfds/NAME#CONFIG``); ``None``: the default one.
        scale: As in :class:`FolderSource`.
        column: The image column; ``None``: the first ``datasets.Image`` column.
        cache_dir: ``datasets`` cache folder; ``None``: ``HF_DATASETS_CACHE``.
    """

    name: str
    split: str = "train"
    config: str | None = None
    scale: float = 1.0
    column: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        datasets = _import_datasets(self.name)
        dataset = self._load(datasets)
        images = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
        if not images or (self.column is not None and self.column not in images):
            found = ", ".join(f"{name} ({getattr(feature, 'dtype', type(feature).__name__)})"
                              for name, feature in dataset.features.items())
            what = f"column '{self.column}' is not an image column" if images else "has no image column"
            raise ImageSourceError(
                f"{self.spec} {what} (columns: {found})",
                "cast the column holding images to datasets.Image() and save the dataset "
                "(ds.cast_column('img', datasets.Image()).to_parquet('DIR/train.parquet')), "
                "then pass --images hfds/DIR",
            )
        if len(dataset) == 0:
            raise ImageSourceError(f"{self.spec} has no rows", "pick another --images-split or dataset")
        column = self.column or images[0]
        class_labels = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.ClassLabel)]
        label_column = class_labels[0] if class_labels else None
        # The image column, left encoded (rows decode with PIL here, so errors name the row and file), and the first
        # class-label column for --labels dataset.
        dataset = dataset.select_columns([column, *class_labels[:1]]).cast_column(column, datasets.Image(decode=False))
        object.__setattr__(self, "column", column)
        object.__setattr__(self, "_dataset", dataset)
        object.__setattr__(self, "_label_column", label_column)

    @property
    def spec(self) -> str:
        """The source as ``--images`` and ``--images-split`` name it, for messages."""
        return f"{self._label} ({self.split})"

    @property
    def _label(self) -> str:
        return f"{HFDS_PREFIX}{self.name}" + (f"#{self.config}" if self.config else "")

    @property
    def dataset(self) -> Any:
        """The ``datasets.Dataset`` (image column only, undecoded)."""
        return self._dataset  # type: ignore[attr-defined]

    def available(self) -> int | None:
        return len(self.dataset)

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf-dataset", "name": self.name, "config": self.config, "split": self.split,
                "column": self.column, "num_rows": len(self.dataset), "local": Path(self.name).is_dir(),
                "label_column": self._label_column, "scale": self.scale}  # type: ignore[attr-defined]

    def window(self, index: int, size: int | tuple[int, int]) -> Tensor:
        file, name = self._file(index)
        return load_window(file, name, size, self.scale)

    def windows(self, indices: Sequence[int], size: int | tuple[int, int], device: torch.device) -> Tensor:
        """Windows ``indices`` as one batch on ``device``, JPEG images decoded there (:func:`decode_windows`)."""
        return decode_windows([self._file(index) for index in indices], size, self.scale, device)

    def classes(self) -> tuple[list[int], list[str]]:
        """Class index of every row and the class names, from the dataset's first ``datasets.ClassLabel`` column.

        Raises:
            ImageSourceError: The split has no class-label column, or rows without a label (``-1``).
        """
        column = self._label_column  # type: ignore[attr-defined]
        if column is None:
            raise ImageSourceError(f"--labels dataset: {self.spec} has no class-label column",
                                   "cast the label column to datasets.ClassLabel, or leave --labels out to distil")
        labels = [int(label) for label in self.dataset[column]]
        if min(labels) < 0:
            raise ImageSourceError(f"--labels dataset: {labels.count(-1)} rows of {self.spec} have no label (-1)",
                                   "use a labelled split (--images-split), or leave --labels out to distil")
        return labels, list(self.dataset.features[column].names)

    def fits(self, index: int, size: int) -> bool:
        return min(self.header(index)[1:3]) >= size

    def header(self, index: int) -> ImageHeader:
        """Row ``index``'s image header (:func:`image_header`), its size at the photos' scale."""
        return scaled_header(image_header(*self._file(index)), self.scale)

    def _file(self, index: int) -> tuple[str | IO[bytes], str]:
        """The image of row ``index`` (an open byte stream or a path) and its name.

        Raises:
            ImageSourceError: The cell is empty (an unreadable image, skipped like one).
        """
        row = index % len(self.dataset)
        value = self.dataset[row][self.column]
        name = f"row {row} of {self.spec}"
        if not value or not (value.get("bytes") or value.get("path")):
            raise ImageSourceError.unreadable(name, "the cell is empty", "drop rows without an image")
        return (io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]), name

    def _load(self, datasets: Any) -> Any:
        local = Path(self.name)
        try:
            with _datasets_progress(datasets):
                if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
                    return self._load_from_disk(datasets, local)
                return datasets.load_dataset(self.name, self.config, split=self.split, cache_dir=self.cache_dir)
        except PPPAuditError:  # ours already names the dataset (an ImageSourceError is an OSError too)
            raise
        except ValueError as exc:  # an unknown split or configuration, among others
            raise self._value_error(datasets, exc) from None
        except (OSError, datasets.exceptions.DatasetsError) as exc:  # not found, offline, unreadable files
            raise ImageSourceError(f"cannot load {self.spec}: {one_line(exc)}", self._where_hint(datasets, local)) \
                from None

    def _load_from_disk(self, datasets: Any, folder: Path) -> Any:
        saved = datasets.load_from_disk(str(folder))
        splits = list(saved) if isinstance(saved, datasets.DatasetDict) else [str(saved.split or "train")]
        if self.split not in splits:
            raise ImageSourceError(f"saved dataset {self._label} has no split '{self.split}' (splits: "
                                   f"{', '.join(splits)})", "pass one of them as --images-split")
        return saved[self.split] if isinstance(saved, datasets.DatasetDict) else saved

    def _value_error(self, datasets: Any, exc: ValueError) -> ImageSourceError:
        try:
            splits = datasets.get_dataset_split_names(self.name, self.config, cache_dir=self.cache_dir)
        except Exception:  # noqa: BLE001 - the original error says more than a failed second look
            splits = None
        asked = [part.split("[")[0].strip() for part in self.split.split("+")]
        if splits and any(name not in splits for name in asked):
            return ImageSourceError(f"{self._label} has no split '{self.split}' (splits: {', '.join(splits)})",
                                    "pass one of them as --images-split")
        return ImageSourceError(f"cannot load {self.spec}: {one_line(exc)}",
                                "check --images-split, and pick a configuration as hfds/NAME#CONFIG")

    def _where_hint(self, datasets: Any, local: Path) -> str:
        local_data = "--images hfds/PATH (a folder of parquet files or class folders) or --images DIR (image files)"
        if datasets.config.HF_HUB_OFFLINE and not local.exists():
            return (f"HF_HUB_OFFLINE is set and '{self.name}' is neither in the datasets cache nor a local folder: "
                    f"point at local data with {local_data}, or run once online to cache it")
        if local.exists():
            return f"'{self.name}' is a local folder that datasets cannot read: pass {local_data}"
        return (f"check the dataset id (or the folder path); for local data pass {local_data}; for a gated or private "
                "dataset log in with `hf auth login`")


@contextlib.contextmanager
def _datasets_progress(datasets: Any) -> Iterator[None]:
    """``datasets``' progress bars only on a terminal: elsewhere (CI logs, ``--json -`` pipes) stderr keeps one line
    per event, so an error stays a single line."""
    if sys.stderr.isatty() or not datasets.is_progress_bar_enabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def _import_datasets(name: str) -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise ImageSourceError(
            f"reading {HFDS_PREFIX}{name} needs the `datasets` package", "pip install 'ppp-audit[hf]'"
        ) from exc
    return datasets


def image_source(images: str, *, split: str = "train", scale: float = 1.0) -> ImageSource:
    """The source ``--images`` names: ``hfds/NAME[#CONFIG]`` a Hugging Face dataset, anything else a folder; its
    photos at ``scale``."""
    hf = parse_hfds(images)
    if hf is None:
        return FolderSource(Path(images), scale=scale)
    name, config = hf
    return HFDatasetSource(name, split=split, config=config, scale=scale)


@dataclass(frozen=True)
class IndexedSource:
    """Some of a source's windows: window ``i`` is ``base``'s window ``indices[i]``.

    Args:
        base: The source.
        indices: Indices of ``base``, in order.
        unlimited: ``indices`` has no end (fresh built-in images); ``available()`` is then ``None``.
    """

    base: ImageSource
    indices: Sequence[int]
    unlimited: bool = False

    def window(self, index: int, size: int) -> Tensor:
        return self.base.window(self.indices[index], size)

    def windows(self, indices: Sequence[int], size: int, device: torch.device) -> Tensor:
        return read_windows(self.base, [self.indices[index] for index in indices], size, device)

    def available(self) -> int | None:
        return None if self.unlimited else len(self.indices)

    def describe(self) -> dict[str, Any]:
        return self.base.describe()

    def fits(self, index: int, size: int) -> bool:
        return self.base.fits(self.indices[index], size)

    def header(self, index: int) -> ImageHeader | None:
        return source_header(self.base, self.indices[index])


@dataclass(frozen=True)
class SampledSource(IndexedSource):
    """A seeded random sample of a finite source, in index order; the report records how it was drawn.

    Made for a sample of part of the source, or for all of it when some images were turned upright by their EXIF
    orientation (to record how many); ``describe`` has ``sample`` only for the former.

    Attributes:
        skipped_small: Images left out because they are smaller than the window.
        unreadable: Images left out because their header cannot be read (each replaced by the next in the seeded
            order), in that order; the report lists them with the images the loader could not decode.
        small: The headers of the first :data:`~ppp_audit.report.SKIPPED_LISTED` images too small for the window, in
            the seeded order (sources that read headers; ``skipped_small`` counts them all).
        exif_rotated: Images of the sample turned upright by their EXIF orientation (a phone's portrait photo).
    """

    seed: int = 0
    skipped_small: int = 0
    unreadable: tuple[SkippedImage, ...] = ()
    small: tuple[ImageHeader, ...] = ()
    exif_rotated: int = 0

    def describe(self) -> dict[str, Any]:
        described = dict(self.base.describe())
        if len(self.indices) < (self.base.available() or 0):
            sample: dict[str, Any] = {"of": self.base.available(), "seed": self.seed,
                                      "skipped_small": self.skipped_small}
            if self.small:
                sample["small"] = [{"name": h.name, "width": h.width, "height": h.height} for h in self.small]
            described["sample"] = sample
        if self.exif_rotated:
            described["exif_rotated"] = self.exif_rotated
        return described


JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})


def made_on_device(source: ImageSource) -> bool:
    """Whether a device makes ``source``'s windows itself (what ``--images-on auto`` sends to a GPU): the built-in
    images, a folder of JPEG files (by suffix), or any other source with a ``windows`` method; seen through samples,
    splits and caches. Other folders and datasets are decoded on the host."""
    while isinstance(source, (IndexedSource, WindowCache)):
        source = source.base
    if isinstance(source, DeadLeavesSource):
        return True
    if isinstance(source, FolderSource):
        return all(path.suffix.lower() in JPEG_SUFFIXES for path in source.files)
    if isinstance(source, HFDatasetSource):
        return False
    return hasattr(source, "windows")


def usable_order(source: ImageSource, size: int, seed: int, unreadable: list[SkippedImage] | None = None,
                 headers: dict[int, ImageHeader] | None = None) -> Iterator[int | None]:
    """A finite source's indices in seeded random order, ``None`` in place of each image too small for a ``size``
    window (so that callers can count them). Folders list files in sorted order and datasets are often sorted by class,
    so the first N would be a few classes; reading only the images' headers, skipping costs milliseconds.

    Args:
        source: A finite source.
        size: The window side.
        seed: The seed of the order.
        unreadable: Where to record images whose header cannot be read, which are then left out; without it they are
            yielded like readable ones (reading them later reports them).
        headers: Where to record, by index in the order read, the header of each image looked at (sources with a
            ``header`` method: the small ones' names and sizes, the EXIF orientations); sources without one are asked
            ``fits``.
    """
    available = source.available()
    if available is None:
        raise ValueError("an unlimited source has no order to draw from")
    for index in torch.randperm(available, generator=torch.Generator().manual_seed(seed)).tolist():
        try:
            header = source_header(source, index) if headers is not None else None
            if header is None:
                fits = source.fits(index, size)
            else:
                headers[index] = header
                fits = min(header.width, header.height) >= size
        except ImageSourceError as error:
            if error.image is None:  # not about this one image (a dataset that cannot be read at all)
                raise
            if unreadable is None:
                yield index
            else:
                unreadable.append(skipped_image(error))
            continue
        yield index if fits else None


def random_sample(source: ImageSource, count: int, seed: int, size: int, *,
                  skip_unreadable: bool = False) -> ImageSource:
    """``count`` windows of ``size`` drawn at random (seeded) from a finite source, skipping images smaller than the
    window (and, with ``skip_unreadable``, images whose header cannot be read: each is replaced by the next image of
    the seeded order and listed in ``SampledSource.unreadable``); the source itself when it is unlimited, or when every
    image is used, fits and is stored upright (no EXIF orientation to turn).

    Raises:
        ImageSourceError: Fewer than 2 images are large enough and readable.
    """
    available = source.available()
    if available is None:
        return source
    chosen: list[int] = []
    skipped = 0
    unreadable: list[SkippedImage] | None = [] if skip_unreadable else None
    headers: dict[int, ImageHeader] = {}
    for index in usable_order(source, size, seed, unreadable, headers):
        if index is None:
            skipped += 1
            continue
        chosen.append(index)
        if len(chosen) == count:  # before reading the next header: an image not drawn is not counted or named
            break
    if len(chosen) < 2:
        raise _too_few_drawn(source, chosen, size, skipped, unreadable)
    rotated = sum(headers[index].orientation != 1 for index in chosen if index in headers)
    if len(chosen) == available and not rotated:
        return source
    small = [header for header in headers.values() if min(header.width, header.height) < size]
    return SampledSource(source, sorted(chosen), seed=seed, skipped_small=skipped, unreadable=tuple(unreadable or ()),
                         small=tuple(small[:SKIPPED_LISTED]), exif_rotated=rotated)


def sample_photos(source: ImageSource, seed: int, size: int,
                  plan: Callable[[Iterator[tuple[int, int]]], tuple[Any, list[int], int]], *,
                  skip_unreadable: bool = False) -> tuple[SampledSource, Any, list[int]]:
    """Photos of a finite source drawn in the seeded order of :func:`random_sample` (those smaller than ``size`` a
    side skipped, and with ``skip_unreadable`` those whose header cannot be read), as many as ``plan`` uses.

    ``plan`` gets the photos' ``(height, width)`` (upright, at the photo scale) lazily, in that order, and returns
    what it made of them, the places (in that order) of the photos it used, and the least side of a photo it uses
    (:func:`~ppp_audit.canvas.tile_photos`); the photos it read and passed over are counted as too small.

    Returns:
        The sample of the photos used (in source index order), what ``plan`` made, and for each photo of the sample
        its entry in the plan's photos (to match the plan's per-photo entries to the sample's).

    Raises:
        ImageSourceError: Fewer than 2 photos can be used, or the source says no image sizes (no ``header``).
    """
    unreadable: list[SkippedImage] | None = [] if skip_unreadable else None
    headers: dict[int, ImageHeader] = {}
    order: list[int] = []

    def sizes() -> Iterator[tuple[int, int]]:
        for index in usable_order(source, size, seed, unreadable, headers):
            if index is None:  # too small for any border: counted with the others passed over
                continue
            header = headers.get(index) or source_header(source, index)  # unread: strict, it raises its error
            if header is None:
                raise ImageSourceError("the image source says no image sizes (no header)",
                                       "give it a header(index) method returning an images.ImageHeader")
            order.append(index)
            yield header.height, header.width

    made, used, least = plan(sizes())
    chosen = [order[place] for place in used]
    # too small: the photos read up to the last one used (the plan reads ahead) that it passed over
    read = list(headers)
    read = read[:read.index(chosen[-1]) + 1] if chosen else read
    taken = set(chosen)
    small = [headers[index] for index in read if index not in taken and min(headers[index][1:3]) < least]
    if len(chosen) < 2:  # two photos at least: their spread is the mist
        raise _too_few_drawn(source, chosen, least, len(small), unreadable)
    ranked = sorted(range(len(chosen)), key=lambda k: chosen[k])
    rotated = sum(headers[index].orientation != 1 for index in chosen)
    sample = SampledSource(source, [chosen[k] for k in ranked], seed=seed, skipped_small=len(small),
                           unreadable=tuple(unreadable or ()), small=tuple(small[:SKIPPED_LISTED]),
                           exif_rotated=rotated)
    return sample, made, ranked


def _too_few_drawn(source: ImageSource, chosen: list[int], size: int, small: int,
                   unreadable: list[SkippedImage] | None) -> ImageSourceError:
    """The error for a sample of fewer than 2 images, after checking whether the ones left, whose headers could be
    read, can be read at all (so that a folder of broken files says so)."""
    if unreadable:
        errors = {index: _read_error(source, index, size) for index in chosen}
        unreadable += [skipped_image(error) for error in errors.values() if error is not None]
        chosen = [index for index in chosen if errors[index] is None]
    return too_few_images(len(chosen), source.available() or 0, size, small=small, unreadable=unreadable or ())


def _read_error(source: ImageSource, index: int, size: int) -> ImageSourceError | None:
    """The error reading window ``index`` raises when its image cannot be read, ``None`` when it can."""
    try:
        source.window(index, size)
    except ImageSourceError as error:
        if error.image is None:
            raise
        return error
    return None


def skipped_image(error: ImageSourceError) -> SkippedImage:
    """The report's record of an image that cannot be read, from the error :meth:`ImageSourceError.unreadable`
    made."""
    return SkippedImage(name=str(error.image), reason=str(error.reason))


def too_few_images(usable: int, total: int, size: int, *, small: int = 0, unreadable: Sequence[SkippedImage] = (),
                   more: bool = False) -> ImageSourceError:
    """The error for fewer than 2 measurable images among ``total``, naming what left the others out.

    Args:
        usable: Images left to measure.
        total: Images looked at.
        size: The window side.
        small: Images smaller than the window.
        unreadable: Images that cannot be read, in the order met (the first is named).
        more: The source holds images beyond the ``total`` looked at (a larger ``--num-images`` draws them).
    """
    if not unreadable:
        return ImageSourceError(
            f"only {usable} of the {total} images are at least {size}x{size} pixels (the window S + 2m)",
            "use larger images, or a smaller --input-size / --margin",
        )
    first = f"cannot read image '{unreadable[0].name}': {unreadable[0].reason}"
    if usable == 0 and small == 0:
        return ImageSourceError(f"all {total} images are unreadable; the first: {first}",
                                "remove or fix the files, or point --images at a folder of photos")
    causes = [f"{len(unreadable)} unreadable (the first: {first})"]
    fixes = ["fix or remove the unreadable files"]
    if small:
        causes.append(f"{small} smaller than the {size}x{size} window")
        fixes.append("use larger images or a smaller --input-size / --margin")
    if more:
        fixes.append("pass a larger --num-images")
    return ImageSourceError(f"only {usable} of the {total} images can be measured: {', '.join(causes)}",
                            f"a variance needs at least 2 images: {'; '.join(fixes)}")


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
        return index, self.source.window(index, self.size_at(position))

    def size_at(self, position: int) -> int | tuple[int, int]:
        """The window side (or ``(height, width)``) of item ``position``."""
        return self.size

    def batches(self, batch_size: int) -> list[list[int]]:
        """The positions of each batch, in order: ``batch_size`` consecutive items (the last batch may be smaller),
        of one window size."""
        return [list(range(start, min(start + batch_size, len(self)))) for start in range(0, len(self), batch_size)]


class TileDataset(WindowDataset):
    """The tiles of photos that hold several crops each (:class:`~ppp_audit.canvas.PhotoTiles`): item ``position`` is
    ``(photo, tile)``, the tile of photo ``indices[position]`` cut from the photo's centre; batches hold tiles of one
    size (photos of one size, in the order met).

    Args:
        source: The sampled photos (photo ``i`` is the tiles' photo ``i``).
        indices: Which photos (a strided slice per rank when distributed: whole photos, never parts).
        shapes: ``(height, width)`` of every photo's tile, by photo.
    """

    def __init__(self, source: ImageSource, indices: range, shapes: Sequence[tuple[int, int]]) -> None:
        super().__init__(source, indices, 0)
        self.shapes = list(shapes)

    def size_at(self, position: int) -> tuple[int, int]:
        return self.shapes[self.indices[position]]

    def batches(self, batch_size: int) -> list[list[int]]:
        by_shape: dict[tuple[int, int], list[int]] = {}
        for position in range(len(self)):
            by_shape.setdefault(self.size_at(position), []).append(position)
        return [positions[start:start + batch_size] for positions in by_shape.values()
                for start in range(0, len(positions), batch_size)]


def image_loader(dataset: Dataset, *, batch_size: int, workers: int = 0, pin_memory: bool = False,
                 ignore_sigint: bool = False, skip_unreadable: bool = False) -> ImageLoader:
    """Batches of ``dataset`` in order, read in this process or by ``workers`` DataLoader worker processes.

    The way every image loader of ppp-audit is made. Whatever the dataset's items are (``(index, window)`` of a
    :class:`WindowDataset`, ``(crop, label)`` pairs), a :class:`~ppp_audit.errors.PPPAuditError` raised while reading
    one (an unreadable image, say) reaches the caller as the same error, class, message and hint, with workers as
    without: each item is read as data (the error in its place), never left for torch to re-raise as
    ``type(traceback_text)``. With ``skip_unreadable`` an item whose image cannot be read (an
    :meth:`~ppp_audit.errors.ImageSourceError.unreadable` error) is left out of its batch instead and recorded in
    :attr:`ImageLoader.skipped`; a batch of only such items is not yielded.

    Args:
        dataset: A map-style dataset.
        batch_size: Items per batch (the last batch may be smaller).
        workers: DataLoader worker processes; ``0`` reads in this process.
        pin_memory: Put batches in pinned memory (for fast copies to CUDA).
        ignore_sigint: Workers ignore Ctrl-C, leaving it to this process (which stops after the current batch).
        skip_unreadable: Skip items whose image cannot be read, instead of raising the first one's error.
    """
    # windows (of one size, or tiles of several) come in the batches their dataset says, as the DeviceLoader takes them
    batching: dict[str, Any] = ({"batch_sampler": dataset.batches(batch_size)} if isinstance(dataset, WindowDataset)
                                else {"batch_size": batch_size})
    loader = DataLoader(_ErrorsAsData(dataset), num_workers=workers, pin_memory=pin_memory,
                        collate_fn=_collate_readable,
                        worker_init_fn=_ignore_sigint if ignore_sigint and workers else None,
                        **batching)
    return ImageLoader(loader, dataset, skip_unreadable=skip_unreadable)


@dataclass(frozen=True)
class ItemFailure:
    """An item that raised a ppp-audit error while being read: its position in the dataset and the error (which
    pickles with its fields, so it crosses from a DataLoader worker intact)."""

    position: int
    error: PPPAuditError


class ImageLoader:
    """An iterable of batches that raises an item's :class:`~ppp_audit.errors.PPPAuditError` as it was raised, or
    skips the item when its image cannot be read and ``skip_unreadable`` is set; made by :func:`image_loader`.

    Attributes:
        dataset: The dataset the batches come from.
        skip_unreadable: Whether unreadable images are skipped.
        skipped: The items the current (or last) pass skipped, in dataset order.
    """

    def __init__(self, loader: DataLoader, dataset: Dataset, *, skip_unreadable: bool = False) -> None:
        self._loader = loader
        self.dataset = dataset
        self.skip_unreadable = skip_unreadable
        self.skipped: list[ItemFailure] = []

    def __len__(self) -> int:
        """The number of batches."""
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        self.skipped = []
        for loaded in self._loader:
            for failure in loaded.failures:
                error = failure.error
                if not (self.skip_unreadable and isinstance(error, ImageSourceError) and error.image is not None):
                    raise error
                self.skipped.append(failure)
            if loaded.batch is not None:
                yield loaded.batch


class DeviceLoader:
    """Batches of a :class:`WindowDataset`'s windows made on ``device`` (:func:`read_windows`), in order, as
    ``(indices, windows)``: what :class:`ImageLoader` hands out, with the same errors and skips, but no worker
    processes and no copies from the host.

    A batch with an image that cannot be read is read again one image at a time, so that the error names that image
    and, with ``skip_unreadable``, the others are kept. On CUDA each batch is made on a side stream: the next batch
    is made while the GPU still runs the passes the loop queued for the last one (the loop's stream waits for it
    before its own next passes). The side stream does not wait for the loop's: a source whose ``windows`` reads
    device tensors must have finished writing them (rendering, decoding and cached windows read none the loop
    writes).

    Attributes:
        dataset: The dataset the batches come from.
        skip_unreadable: Whether unreadable images are skipped.
        skipped: The items the current (or last) pass skipped, in dataset order.
    """

    def __init__(self, dataset: WindowDataset, *, batch_size: int, device: torch.device,
                 skip_unreadable: bool = False) -> None:
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.skip_unreadable = skip_unreadable
        self.skipped: list[ItemFailure] = []
        self._stream: Any = None

    def __len__(self) -> int:
        return len(self.dataset.batches(self.batch_size))

    def _read(self, indices: list[int], size: int | tuple[int, int]) -> Tensor:
        dataset = self.dataset
        if self.device.type != "cuda":
            return read_windows(dataset.source, indices, size, self.device)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._stream):
            windows = read_windows(dataset.source, indices, size, self.device)
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._stream)
        windows.record_stream(current)  # the allocator must not reuse it while the loop's stream reads it
        return windows

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        self.skipped = []
        dataset = self.dataset
        for positions in dataset.batches(self.batch_size):
            indices = [dataset.indices[p] for p in positions]
            size = dataset.size_at(positions[0])
            try:
                windows = self._read(indices, size)
            except PPPAuditError:
                pass
            else:
                yield torch.tensor(indices), windows
                continue
            kept, parts = [], []
            for position, index in zip(positions, indices):
                try:
                    parts.append(self._read([index], size))
                except PPPAuditError as error:
                    if not (self.skip_unreadable and isinstance(error, ImageSourceError) and error.image is not None):
                        raise
                    self.skipped.append(ItemFailure(position, error))
                    continue
                kept.append(index)
            if kept:
                yield torch.tensor(kept), torch.cat(parts)


class WindowCache:
    """A source whose windows, once made on a device by :func:`read_windows`, are kept there (up to
    ``budget_bytes``), so that later passes over the same sample (fine-tuning's re-measurements) do not decode or
    render them again. Everything else, ``window`` included (read on the host, by DataLoader workers too), is the
    base source's; a pickled copy holds no windows. The :class:`~ppp_audit.auditor.Auditor` keeps one per source it
    measures on the device.

    Args:
        base: The source.
        budget_bytes: The most bytes of windows to keep; windows past it are made again on every pass.
    """

    def __init__(self, base: ImageSource, budget_bytes: int) -> None:
        self.base, self.budget_bytes = base, budget_bytes
        self._kept: dict[tuple[int, int, str], Tensor] = {}
        self._bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_kept": {}, "_bytes": 0}

    def window(self, index: int, size: int) -> Tensor:
        return self.base.window(index, size)

    def windows(self, indices: Sequence[int], size: int, device: torch.device) -> Tensor:
        keys = [(index, size, str(device)) for index in indices]
        missing = [key[0] for key in keys if key not in self._kept]
        if missing:
            made = read_windows(self.base, missing, size, device)
            for index, window in zip(missing, made):
                if self._bytes + window.nbytes > self.budget_bytes:
                    break
                self._kept[(index, size, str(device))] = window.clone()
                self._bytes += window.nbytes
            if len(missing) == len(keys):
                return made
            made_by_index = dict(zip(missing, made))
            return torch.stack([self._kept[key] if key in self._kept else made_by_index[key[0]] for key in keys])
        return torch.stack([self._kept[key] for key in keys])

    def available(self) -> int | None:
        return self.base.available()

    def describe(self) -> dict[str, Any]:
        return self.base.describe()

    def fits(self, index: int, size: int) -> bool:
        return self.base.fits(index, size)

    def header(self, index: int) -> ImageHeader | None:
        return source_header(self.base, index)


class _Loaded(NamedTuple):
    """What a DataLoader hands over per batch: the readable items collated (``None``: none was) and the failures."""

    batch: Any
    failures: tuple[ItemFailure, ...]


class _ErrorsAsData(Dataset):
    """``dataset``, with the :class:`PPPAuditError` an item raises returned in its place as an :class:`ItemFailure`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except PPPAuditError as error:
            return ItemFailure(index, error)


def _collate_readable(items: list[Any]) -> _Loaded:
    """The batch of the items that were read, and the failures among them (in order: the main process raises the
    first, as it would have been raised without workers, or skips them)."""
    failures = tuple(item for item in items if isinstance(item, ItemFailure))
    readable = [item for item in items if not isinstance(item, ItemFailure)]
    return _Loaded(default_collate(readable) if readable else None, failures)


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops them after the current batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
