"""Images made and decoded with tensor ops on the audit's device, in batches (docs/images.md, "On the device").

A GPU runs the crop and window passes of thousands of windows a second; one CPU core renders about 25 dead-leaves
windows of 352 px a second, and decodes and resizes photos at a few to a few hundred a second, by their size. This
module keeps the GPU fed, and runs the same code on the CPU (``device="cpu"``), which is how the tests check it:

* :func:`render_dead_leaves` draws the built-in dead-leaves pictures (:class:`~ppp_audit.images.DeadLeavesSource`)
  with tensor ops, the one renderer on every device: a uniform background, discs with radii ``p(r) ~ r^-3`` painted
  large to small with a one-pixel anti-aliased edge, Beta(2, 2) luminance with a colour tint, 1/f texture with its
  floor at ``2 * scale`` px. Its random numbers come from a counter-based hash (:func:`counter_bits`) of
  ``(seed, index, stream, counter)`` in integer tensor ops, which give the same bits on every device: window ``i`` of
  seed ``s`` is the same picture on the CPU and on a GPU (up to float rounding of ``sqrt``/``log``/FFT), alone or in
  any batch (SPEC §3.5).
* :func:`decode_jpegs` decodes a batch of JPEG files on the device (``torchvision.io.decode_jpeg``: nvJPEG on CUDA),
  and :func:`fit_window` resizes and centre-crops an image there, as the PIL path does (it is that path's resize
  too). :func:`orient` turns a decoded image upright by its EXIF orientation, on any device, for both paths (so
  that host and device read a phone photo the same way up).

The sources' batch reads (``windows(indices, size, device)``), the device-side loader and the window cache that use
these are in :mod:`ppp_audit.images` (``decode_windows``, ``DeviceLoader``, ``WindowCache``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor


# ---------------------------------------------------------------------------------------------------------------------
# Counter-based random numbers: the same on every device
# ---------------------------------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _int32(value: int) -> int:
    """A 32-bit pattern as the signed int32 value with the same bits."""
    value &= _MASK32
    return value - 2**32 if value >= 2**31 else value


_M1, _M2 = _int32(0x7FEB352D), _int32(0x846CA68B)


def _shift(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int32 bit patterns (torch's ``>>`` is arithmetic: it copies the sign bit)."""
    return (x >> bits) & ((1 << (32 - bits)) - 1)


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash with full avalanche (Wellons' ``lowbias32``) on int32 tensors, read as bit patterns.

    int32 products wrap modulo 2**32 on every device torch runs on (two's complement hardware), which is the
    arithmetic the hash needs; ``tests/test_device_images.py`` checks the bits against a pure-Python reference, and
    ``benchmarks/gpu_check.sh`` compares CPU and CUDA audits of the same seeds. One int32 op per step keeps the
    renderer's memory traffic, what bounds it on a GPU, low.
    """
    x = x ^ _shift(x, 16)
    x = x * _M1
    x = x ^ _shift(x, 15)
    x = x * _M2
    return x ^ _shift(x, 16)


def stream_keys(seed: int, indices: Tensor, stream: int) -> Tensor:
    """One 32-bit key (int32) per image for random stream ``stream`` of window ``indices`` (int64, any device) of
    ``seed`` (any integer in ``[0, 2**64)``)."""
    low, high = (indices & _MASK32).to(torch.int32), ((indices >> 32) & _MASK32).to(torch.int32)
    key = _mix32(torch.full_like(low, _int32(seed)))
    key = _mix32(key ^ _int32(seed >> 32))
    key = _mix32(key ^ low)
    key = _mix32(key ^ high)
    return _mix32(key ^ stream)


def counter_bits(keys: Tensor, count: int) -> Tensor:
    """``count`` 32-bit random patterns per key: shape ``(*keys.shape, count)``, int32."""
    # The counter is hashed before it meets the key: with ``key ^ counter`` two streams whose keys differ in low bits
    # only would hand out the same numbers in a permuted order; now they share isolated values by chance, no more.
    counter = _mix32(torch.arange(count, device=keys.device, dtype=torch.int32) ^ _int32(_GOLDEN))
    return _mix32(keys.unsqueeze(-1) ^ counter)


def counter_uniform(keys: Tensor, count: int) -> Tensor:
    """``count`` uniform float32 numbers in the open interval (0, 1) per key (24 random bits each)."""
    return (_shift(counter_bits(keys, count), 8).to(torch.float32) + 0.5) * 2.0**-24


def counter_normal_pair(keys: Tensor, keys2: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Two independent sets of ``count`` standard normal float32 numbers per key (Box-Muller on two uniform
    streams)."""
    radius = torch.sqrt(-2.0 * torch.log(counter_uniform(keys, count)))
    angle = (2.0 * math.pi) * counter_uniform(keys2, count)
    return radius * torch.cos(angle), radius * torch.sin(angle)


# ---------------------------------------------------------------------------------------------------------------------
# The dead-leaves renderer
# ---------------------------------------------------------------------------------------------------------------------

TILE = 8
"""Side of the square tiles the renderer paints: each disc is composited only into the tiles its edge can reach."""

# Random streams of one picture (fixed: changing one changes every picture of every seed).
_BACKGROUND, _RADIUS, _CENTRE_Y, _CENTRE_X, _LUMINANCE, _TINT, _NOISE = 0, 1, 2, 3, 4, 7, 9


def disc_count(num_discs: int, size: int, scale: int | None, periodic: bool = False) -> tuple[int, float, float]:
    """Discs per window of ``size`` px and the radius range (the same density of disc centres per area as
    ``num_discs`` over ``(scale + 2 r_max)²``, so stationary in pixels). A window's centres spread over its side plus
    a border of ``r_max``; a periodic canvas's over one period, its side."""
    scale = scale or size
    r_min, r_max = max(1.5, scale / 96), scale / 3
    spread = size if periodic else size + 2 * r_max
    return round(num_discs * (spread / (scale + 2 * r_max)) ** 2), r_min, r_max


def render_dead_leaves(seed: int, indices: Sequence[int] | Tensor, size: int, *, scale: int | None = None,
                       num_discs: int = 1200, device: torch.device | str = "cpu",
                       max_elements: int | None = None, compile: str | None = None, periodic: bool = False) -> Tensor:
    """Dead-leaves windows ``indices`` of ``seed``, rendered with tensor ops on ``device``.

    The laws of :class:`~ppp_audit.images.DeadLeavesSource` (see the module docstring); the random numbers are the
    same on every device, and window ``i`` does not depend on the other windows of the batch.

    Args:
        seed: Base seed.
        indices: Window indices.
        size: Window side in px.
        scale: The side the picture's statistics are set for (as ``DeadLeavesSource.scale``); ``None``: ``size``.
        num_discs: As ``DeadLeavesSource.num_discs``.
        device: Where to render.
        max_elements: Largest intermediate tensor, in elements (bounds memory; default 2**26 on the CPU, 2**28 on
            other devices).
        compile: A ``torch.compile`` backend for the renderer's elementwise work (:func:`compiled_kernels`: on a GPU
            inductor fuses the hash and the compositing into a few kernels); ``None``: eager.
        periodic: Draw each picture periodic, of period ``size`` in both directions (the canvases of
            :mod:`ppp_audit.canvas`): disc centres uniform over one period, each disc painted at its copies one
            period away, the texture made at ``size`` (an FFT field is periodic). The same laws, with the
            picture's statistics set by ``scale`` as for windows.

    Returns:
        Float32 tensor ``(len(indices), 3, size, size)`` in [0, 1] on ``device``.
    """
    device = torch.device(device)
    indices = torch.as_tensor(indices, dtype=torch.int64).to(device).reshape(-1)
    budget = max_elements or (2**26 if device.type == "cpu" else 2**28)
    # Images in chunks: the noise field alone holds 2 * (2 size)² numbers per image.
    per_image = 8 * (2 * size) ** 2
    step = max(1, budget // per_image)
    kernels = compiled_kernels(compile) if compile else EAGER
    return torch.cat([_render_chunk(seed, indices[i:i + step], size, scale, num_discs, budget, kernels, periodic)
                      for i in range(0, len(indices), step)]) if len(indices) else \
        torch.empty(0, 3, size, size, device=device)


def _render_chunk(seed: int, indices: Tensor, size: int, scale: int | None, num_discs: int, budget: int,
                  kernels: Kernels, periodic: bool = False) -> Tensor:
    count, r_min, r_max = disc_count(num_discs, size, scale, periodic)
    keys = {stream: stream_keys(seed, indices, stream) for stream in range(_NOISE + 1)}
    background = 0.2 + 0.6 * counter_uniform(keys[_BACKGROUND], 3)  # (B, 3)
    u = counter_uniform(keys[_RADIUS], count)
    radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5  # p(r) ~ r^-3, by inverting its CDF
    low, spread = (0.0, float(size)) if periodic else (-r_max, size + 2 * r_max)
    centre_y = low + spread * counter_uniform(keys[_CENTRE_Y], count)
    centre_x = low + spread * counter_uniform(keys[_CENTRE_X], count)
    # Beta(2, 2) is the law of the median of three uniforms.
    luminance = torch.stack([counter_uniform(keys[_LUMINANCE + j], count) for j in range(3)]).median(dim=0).values
    tint_a, tint_b = counter_normal_pair(keys[_TINT], keys[_TINT + 1], 2 * count)
    tint = 0.15 * torch.cat([tint_a, tint_b], dim=-1)[..., :3 * count].reshape(-1, count, 3)
    colours = (luminance.unsqueeze(-1) * (1.0 + tint)).clamp_(0.0, 1.0)
    # Large discs first, small on top: the same picture as a random order, with far fewer hidden discs listed.
    order = torch.argsort(radii, dim=1, descending=True, stable=True)
    radii, centre_y, centre_x = (t.gather(1, order) for t in (radii, centre_y, centre_x))
    colours = colours.gather(1, order.unsqueeze(-1).expand(-1, -1, 3))
    if periodic:  # each disc at its 9 copies one period apart, next to each other: the painting order is kept
        shifts = torch.tensor([-size, 0, size], device=radii.device, dtype=radii.dtype)
        batch = radii.shape[0]
        centre_y = (centre_y[:, :, None, None] + shifts[:, None]).expand(-1, -1, 3, 3).reshape(batch, -1)
        centre_x = (centre_x[:, :, None, None] + shifts[None, :]).expand(-1, -1, 3, 3).reshape(batch, -1)
        radii = radii.repeat_interleave(9, dim=1)
        colours = colours.repeat_interleave(9, dim=1)
    image = paint_discs(background, centre_y, centre_x, radii, colours, size, budget, kernels)
    image += 0.06 * pink_noise(keys[_NOISE], size, scale, kernels, periodic=periodic).unsqueeze(1)
    return image.clamp_(0.0, 1.0)


def paint_discs(background: Tensor, centre_y: Tensor, centre_x: Tensor, radii: Tensor, colours: Tensor, size: int,
                budget: int, kernels: Kernels | None = None) -> Tensor:
    """Discs composited in order (each one over the ones before) on their backgrounds: ``(B, 3, size, size)``.

    Each disc is listed in the tiles its anti-aliased edge can reach, top one first; every tile then composites its
    list at once: ``pixel = background * prod_k (1 - a_k) + sum_k colour_k a_k prod_{j above k} (1 - a_j)``, which is
    painting them one after the other, in one pass (a running product down the list).
    """
    device, kernels = background.device, kernels or EAGER
    batch, count = radii.shape
    tiles_per_side = -(-size // TILE)
    tiles_per_image = tiles_per_side**2
    # Tiles a disc can touch: pixel p (centre p + 0.5) has coverage > 0 when |p + 0.5 - c| < r + 0.5.
    first_y = torch.floor((centre_y - radii - 1.0) / TILE).clamp_(min=0).long()
    last_y = torch.floor((centre_y + radii) / TILE).clamp_(max=tiles_per_side - 1).long()
    first_x = torch.floor((centre_x - radii - 1.0) / TILE).clamp_(min=0).long()
    last_x = torch.floor((centre_x + radii) / TILE).clamp_(max=tiles_per_side - 1).long()
    rows, cols = (last_y - first_y + 1).clamp_(min=0), (last_x - first_x + 1).clamp_(min=0)
    # One (disc, tile) pair per tile a disc touches, top disc first (discs come in painting order, so reversed); a
    # stable sort by tile keeps that order within each tile.
    per_disc = (rows * cols).reshape(-1).flip(0)
    disc = torch.repeat_interleave(torch.arange(batch * count - 1, -1, -1, device=device), per_disc)
    within = torch.arange(disc.numel(), device=device) - torch.repeat_interleave(torch.cumsum(per_disc, 0) - per_disc,
                                                                                per_disc)
    cols_of = cols.reshape(-1)[disc]
    tile = ((disc // count) * tiles_per_image + (first_y.reshape(-1)[disc] + within // cols_of) * tiles_per_side
            + first_x.reshape(-1)[disc] + within % cols_of)
    tile, order = torch.sort(tile, stable=True)
    disc = disc[order]
    listed = torch.bincount(tile, minlength=batch * tiles_per_image)
    slot = torch.arange(tile.numel(), device=device) - (torch.cumsum(listed, 0) - listed)[tile]
    busy = torch.nonzero(listed, as_tuple=True)[0]
    busy = busy[torch.argsort(listed[busy], stable=True)]
    # Chunk sizes are read on the host (as repeat_interleave and nonzero read sizes above): the renderer waits for
    # its own stream, a DeviceLoader's side stream on CUDA, not for the measuring loop's.
    lengths = listed[busy].tolist()
    # Per listed slot: centre, radius and colour; an empty slot is a disc of radius -1 (coverage 0 everywhere).
    table = torch.full((batch * tiles_per_image, max(lengths[-1] if lengths else 1, 1)), batch * count,
                       dtype=torch.int64, device=device)
    table[tile, slot] = disc
    flat_y = torch.cat([centre_y.reshape(-1), centre_y.new_zeros(1)])
    flat_x = torch.cat([centre_x.reshape(-1), centre_x.new_zeros(1)])
    flat_r = torch.cat([radii.reshape(-1), radii.new_full((1,), -1.0)])
    flat_colours = torch.cat([colours.reshape(-1, 3), colours.new_zeros(1, 3)])

    out = background.repeat_interleave(tiles_per_image, dim=0)[:, :, None, None].expand(-1, -1, TILE, TILE).clone()
    # Busy tiles, fewest discs first, in chunks of similar list lengths (a chunk is padded to its longest list).
    per_slot = 4 * TILE * TILE  # elements of the (tiles, list, TILE, TILE) intermediates alive at once, per slot
    start = 0
    while start < len(busy):
        end = min(len(busy), start + max(1, budget // (per_slot * lengths[start])))
        while end - start > 1 and (end - start) * lengths[end - 1] * per_slot > budget:
            end = start + (end - start) // 2
        ids, length = busy[start:end], lengths[end - 1]
        which = table[ids, :length]
        ty, tx = (ids % tiles_per_image) // tiles_per_side, ids % tiles_per_side
        out[ids] = kernels.composite_tiles((ty * TILE).float(), (tx * TILE).float(), flat_y[which], flat_x[which],
                                           flat_r[which], flat_colours[which], out[ids])
        start = end
    image = out.reshape(batch, tiles_per_side, tiles_per_side, 3, TILE, TILE).permute(0, 3, 1, 4, 2, 5)
    return image.reshape(batch, 3, tiles_per_side * TILE, tiles_per_side * TILE)[..., :size, :size].contiguous()


def noise_spectrum(keys: Tensor, amplitude: Tensor) -> Tensor:
    """Random complex coefficients times ``amplitude`` (an rfft grid), per key, as real pairs: shape
    ``(B, *amplitude.shape, 2)`` (``torch.view_as_complex`` makes it the spectrum).

    Each coefficient's real and imaginary parts are independent, zero-mean, unit-variance uniforms, 16 bits each of
    one hash: the field is a sum of ~10^5 such terms per pixel, so it is Gaussian with the given spectrum all the same
    (as with Gaussian coefficients), at a quarter of the random bits and no ``log``, ``sqrt`` or ``cos``. A pure
    function of its inputs, so that ``torch.compile`` can fuse it into one kernel.
    """
    bits = counter_bits(keys, amplitude.numel())
    pairs = torch.stack([bits & 0xFFFF, _shift(bits, 16)], dim=-1).to(torch.float32)
    pairs = (pairs + 0.5) * (math.sqrt(12.0) / 65536.0) - math.sqrt(3.0)  # uniform on (-sqrt 3, sqrt 3): variance 1
    return (pairs * amplitude.reshape(-1, 1)).reshape(-1, *amplitude.shape, 2)


def pink_noise(keys: Tensor, size: int, scale: int | None, kernels: Kernels | None = None, *,
               periodic: bool = False) -> Tensor:
    """Unit-variance 1/f noise per key, ``(B, size, size)``, cut from a field twice as large so it does not wrap
    around (``periodic``: the field of period ``size`` itself). With a ``scale`` its spectrum is flat below one cycle
    per ``2 * scale`` px: a 1/f field's variance grows without bound with its size, so without that floor the
    normalisation, and with it the texture's contrast at every frequency, would depend on the window's size."""
    kernels = kernels or EAGER
    big = size if periodic else 2 * size
    fy = torch.fft.fftfreq(big, device=keys.device)[:, None]
    fx = torch.fft.rfftfreq(big, device=keys.device)[None, :]
    radius = torch.sqrt(fy**2 + fx**2)
    if scale:
        radius = radius.clamp(min=1.0 / (2 * scale))
    amplitude = 1.0 / radius
    amplitude[0, 0] = 0.0  # no DC: the field has mean 0
    spectrum = torch.view_as_complex(kernels.noise_spectrum(keys, amplitude))
    # One image at a time: a batched FFT (MKL plans by batch size) and a sum over a batch (threads split it by its
    # size) round differently from one image's, and a window must be the same bits alone or in any batch, so that
    # the host's one-by-one windows are the device path's batches (SPEC §3.5).
    fields = []
    for one in spectrum.split(1):
        field = torch.fft.irfft2(one, s=(big, big))[:, :size, :size]
        field = field - field.mean(dim=(1, 2), keepdim=True)
        fields.append(field / (field.std(dim=(1, 2), keepdim=True, correction=0) + 1e-12))
    return torch.cat(fields)


def composite_tiles(origin_y: Tensor, origin_x: Tensor, centre_y: Tensor, centre_x: Tensor, radii: Tensor,
                    colours: Tensor, under: Tensor) -> Tensor:
    """Tiles with their listed discs painted over ``under``: ``(n, 3, TILE, TILE)``.

    Args:
        origin_y: Top pixel row of each tile (n,), float.
        origin_x: Left pixel column of each tile (n,), float.
        centre_y: Disc centres (n, L), top disc first.
        centre_x: Disc centres (n, L).
        radii: Disc radii (n, L); a radius of -1 is an empty slot.
        colours: Disc colours (n, L, 3).
        under: What the tiles show before (n, 3, TILE, TILE).
    """
    pixel = torch.arange(TILE, device=under.device, dtype=torch.float32) + 0.5
    dy2 = (origin_y[:, None, None] + pixel - centre_y[:, :, None]).square()  # (n, L, T)
    dx2 = (origin_x[:, None, None] + pixel - centre_x[:, :, None]).square()
    coverage = (radii[:, :, None, None] + 0.5 - (dy2[..., :, None] + dx2[..., None, :]).sqrt()).clamp(0.0, 1.0)
    # How much of each disc shows through the ones above it: the product of (1 - a) down to it (slot 0: nothing
    # above); the last entry is what shows of ``under``.
    shown = torch.cumprod(torch.cat([torch.ones_like(coverage[:, :1]), 1.0 - coverage], dim=1), dim=1)
    painted = torch.einsum("nlyx,nlc->ncyx", shown[:, :-1] * coverage, colours)
    return painted + under * shown[:, -1:]


@dataclass(frozen=True)
class Kernels:
    """The renderer's pure tensor functions, eager or compiled (``--compile BACKEND`` on the device)."""

    noise_spectrum: Callable[..., Tensor]
    composite_tiles: Callable[..., Tensor]


EAGER = Kernels(noise_spectrum, composite_tiles)


@functools.lru_cache(maxsize=4)
def compiled_kernels(backend: str) -> Kernels:
    """:data:`EAGER`'s functions compiled with ``torch.compile`` (dynamic shapes: batch and list lengths vary)."""
    return Kernels(torch.compile(noise_spectrum, backend=backend, dynamic=True),
                   torch.compile(composite_tiles, backend=backend, dynamic=True))


# ---------------------------------------------------------------------------------------------------------------------
# Photos: JPEG decoded on the device, resized and cut there
# ---------------------------------------------------------------------------------------------------------------------

_JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    """Whether ``data`` starts like a JPEG file (by its bytes: a file's suffix may lie)."""
    return data[:3] == _JPEG_MAGIC


def decode_jpegs(encoded: Sequence[bytes], device: torch.device | str) -> list[Tensor | None]:
    """JPEG files decoded to RGB uint8 ``(3, H, W)`` tensors on ``device`` (nvJPEG on CUDA, in one batched call),
    ``None`` for each one the decoder refuses (corrupt, CMYK, ...: the caller reads those with PIL, which names the
    problem or decodes them)."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(item), dtype=torch.uint8) for item in encoded]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad file fails the batch: decode one by one to find it
            decoded: list[Tensor | None] = []
            for item in data:
                try:
                    decoded.append(decode_jpeg(item, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
            return decoded


EXIF_ORIENTATION_TAG = 0x0112
"""The EXIF tag of the orientation: how to turn the stored pixels to show the picture upright (1: as stored)."""

TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})
"""The EXIF orientations that swap width and height (a quarter turn, or a transpose)."""

# Flips after the transpose (for 5..8), by orientation: what PIL.ImageOps.exif_transpose does, in tensor ops.
_ORIENTATION_FLIPS: dict[int, tuple[int, ...]] = {2: (-1,), 3: (-2, -1), 4: (-2,), 5: (), 6: (-1,), 7: (-2, -1),
                                                  8: (-2,)}


def orient(pixels: Tensor, orientation: int) -> Tensor:
    """An image ``(C, H, W)`` (any dtype, any device) turned upright by its EXIF ``orientation``, as
    ``PIL.ImageOps.exif_transpose`` turns it (``tests/test_image_edges.py`` checks all eight); ``1`` and values
    outside 1..8 leave it as stored (PIL ignores them too)."""
    flips = _ORIENTATION_FLIPS.get(orientation)
    if flips is None:
        return pixels
    if orientation in TRANSPOSED_ORIENTATIONS:
        pixels = pixels.transpose(-2, -1)
    return pixels.flip(flips).contiguous() if flips else pixels.contiguous()


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """An image's ``(height, width)`` at ``scale`` (rounded; at least 1 px): the one rule every photo is sized by."""
    if scale == 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_window(pixels: Tensor, size: int | tuple[int, int], scale: float = 1.0) -> Tensor:
    """The centre window of an image (float ``(3, H, W)`` in [0, 1], any device), ``size x size`` or ``(height,
    width)``, after resizing it (antialiased) by ``scale`` (:func:`scaled_size`; ``1`` keeps its own pixels). The
    scaled image must hold the window: it is never upscaled to make room."""
    from torchvision.transforms.functional import center_crop, resize

    height, width = (size, size) if isinstance(size, int) else size
    target = scaled_size(*pixels.shape[-2:], scale)
    if target != tuple(pixels.shape[-2:]):
        pixels = resize(pixels, list(target), antialias=True)
    return center_crop(pixels, [height, width]).clamp_(0.0, 1.0)
