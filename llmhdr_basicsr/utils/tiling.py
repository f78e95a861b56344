"""Tiled inference at full resolution and bounded memory, with tiles that agree.

Two layers:

- :func:`tiled_forward` cuts an image that stays on the CPU into overlapping tiles, sends one tile at a time to the
  device (Real-ESRGAN#184: never the whole image), and blends the tile outputs back on the CPU with a raised-cosine
  window over each overlap. Along each axis the windows of neighbouring tiles form a partition of unity
  (``cos^2 + sin^2 = 1``), so there is no visible seam and no brightness ripple; the accumulated weights are divided
  out anyway, which keeps any tile layout exact.
- :class:`GlobalStatsTiler` wraps a network whose output depends on *image-wide* quantities and makes every tile use
  the same ones. For :class:`~llmhdr_basicsr.archs.feedback_unet_arch.FeedbackUNet` these are

  1. every ``nn.InstanceNorm2d`` call (the encoder's once, the decoder's ``num_iter`` times): instance norm divides
     by the mean/variance of *whatever image it sees*, so each tile would be normalised differently (different
     exposure and contrast per tile, visible as a patchwork);
  2. the guidance vector (CLIP embedding of the input and of the previous output).

  The ExpandNet recipe (``hdr-expandnet`` ``predict``: global branch once on a downscale, local branches on patches)
  is applied to both: one *global pass* runs the network on a copy of the whole image downscaled (antialiased
  bicubic, aspect ratio kept) to at most ``global_size ** 2`` pixels (by default the area of one tile, so it needs no
  more memory than a tile), records the per-channel mean and variance of every instance-norm call in call order, and
  records every guidance vector; then the tiles run with exactly those statistics and vectors (*frozen*).

  The statistics of a downscaled image are not those of the full-resolution one (fine texture is averaged away, each
  layer sees a different scale), so the frozen result equals the untiled one (up to the receptive-field border effect
  below) only when the image has at most ``global_size ** 2`` pixels, and otherwise differs by about as much as
  per-tile statistics would on statistically uniform images -- but without the tile-to-tile patchwork that per-tile
  statistics cause on images whose content changes across the frame. Re-estimating the statistics from the
  full-resolution tiles and iterating was tried and diverges (each layer's statistics depend on the normalisation of
  all layers before it), so it is not offered.

Tile layout: tile size and overlap are rounded to a multiple of ``multiple`` (8 = the three 2x poolings of the
FeedbackUNet), tile origins are multiples of ``multiple`` too, so every tile sees the same pooling grid as the untiled
image and its interior reproduces the untiled result. The fewest tiles that cover each axis with the requested
overlap are spread evenly and shortened as far as that count allows (a 3840 x 2160 image with tile 512 / overlap 32
becomes 8 x 5 tiles of 464 x 512: 15 % extra pixels); the last one ends at the image border and may be
up to ``multiple - 1`` pixels longer. An image that fits in one tile is processed in one call, exactly like an
untiled run.

What tiling cannot fix: the receptive field. Pixels within roughly the receptive-field radius of a tile border see
zero padding instead of their neighbours; the blend hides this where the overlap is at least that wide. Other global
operations than instance norm, guidance and modules marked ``image_wide`` (such as the spatial mean behind the learned
camera curve, :mod:`llmhdr_basicsr.archs.crf_basis`) -- attention over the whole image, image-wide percentiles as in
the classical iTMO baselines -- are not captured: run such networks untiled.

Measured (CPU, random-weight FeedbackUNet ``num_feat=16``, ``headroom=4``, its zero-initialised head and gates
re-drawn from N(0, 0.1) so that the output depends on every layer; PSNR-mu of the tiled linear output against the
untiled one, ``calculate_psnr_mu(align='none')``):

=====================  =========  ===============  ===================  ===================
image                  tile/ovl.  per-tile stats   frozen, default      frozen, full image
=====================  =========  ===============  ===================  ===================
hubble 1000 x 872      256 / 32   42.9 dB          37.0 dB              84.3 dB
hubble 1000 x 872      512 / 64   48.1 dB          43.1 dB              95.7 dB
rocket 640 x 427       256 / 32   28.3 dB          45.7 dB              77.3 dB
rocket 640 x 427       512 / 64   33.5 dB          50.1 dB              91.2 dB
=====================  =========  ===============  ===================  ===================

"frozen, full image" (``global_size=0``) isolates the tiling itself: blending and the receptive-field cut cost
almost nothing. The default (statistics from a copy of ``tile x tile`` pixels) removes the patchwork of per-tile
statistics on images whose content changes across the frame (rocket: +17 dB), but on a statistically uniform
image (the Hubble star field, where every tile has the global statistics anyway) the resolution change of the
global pass costs more than per-tile statistics (-5 dB). A 3840 x 2160 image with ``num_feat=64``, tile 512,
overlap 32 peaks at 2.1 GiB resident memory on the CPU (process total, 0.96 GiB of it before the forward; untiled
1 MP: 3.8 GiB) and runs at 1.15x the megapixels per second of an untiled 1 MP forward (0.0297 vs 0.0259 MP/s, 2
threads; 1.19x in CPU time with 1 thread): 512-pixel tiles use the caches better than one large image, which pays for
the 15 % overlap and the global pass.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llmhdr_basicsr.archs.arch_util import accepted_kwargs

from .defaults import DEFAULT_OVERLAP, DEFAULT_TILE  # noqa: F401  (re-exported; the CLIs' defaults)


class Tile(NamedTuple):
    """One tile of an ``H x W`` image: the window cut out and its blend weights.

    Attributes:
        y0, y1, x0, x1: the window ``[y0:y1, x0:x1]`` sent to the network (overlaps included).
        wy: ``(y1 - y0,)`` float32 blend weights along y (raised-cosine ramps over the overlaps, 1 elsewhere).
        wx: ``(x1 - x0,)`` float32 blend weights along x.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    wy: torch.Tensor
    wx: torch.Tensor


def _round_tile(tile: int, overlap: int, multiple: int) -> tuple[int, int]:
    """Tile rounded down and overlap rounded up to ``multiple``; overlap at most half the tile."""
    if multiple < 1:
        raise ValueError(f'tiling: multiple must be >= 1, got {multiple}')
    if tile < 2 * multiple:
        raise ValueError(f'tiling: tile must be at least {2 * multiple} pixels, got {tile}')
    if overlap < 0:
        raise ValueError(f'tiling: overlap must be >= 0, got {overlap}')
    tile_r = tile // multiple * multiple
    overlap_r = -(-overlap // multiple) * multiple
    if 2 * overlap_r > tile_r:
        raise ValueError(
            f'tiling: overlap ({overlap}, rounded to {overlap_r}) must be at most half the tile ({tile}, rounded to '
            f'{tile_r}); use a larger tile or a smaller overlap'
        )
    return tile_r, overlap_r


def _axis_spans(size: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int]]:
    """Evenly spread ``[start, end)`` spans along one axis: starts multiples of ``multiple``, last end = ``size``.

    Uses the fewest spans of length ``tile`` that overlap by at least ``overlap``, then shortens the span length (to a
    multiple of ``multiple``) as far as that count allows, so that little is computed twice.
    """
    if size < tile + multiple:  # one span, at most multiple - 1 longer than the tile
        return [(0, size)]

    def count(t: int) -> int:
        last = (size - t) // multiple * multiple  # the last span is [last, size): up to multiple - 1 longer than t
        return 1 + max(1, math.ceil(last / (t - overlap)))  # fewest spans whose even spacing is <= t - overlap

    n = count(tile)
    short = min(tile, -(-math.ceil((size + (n - 1) * overlap) / n) // multiple) * multiple)
    if short > overlap and short < tile and count(short) == n:
        tile = short
    last = (size - tile) // multiple * multiple
    starts = sorted({int(i * last / (n - 1)) // multiple * multiple for i in range(n)})
    return [(s, size if i == len(starts) - 1 else s + tile) for i, s in enumerate(starts)]


def _ramp(length: int, before: int, after: int) -> torch.Tensor:
    """1-D window: raised-cosine rise over the first ``before`` and fall over the last ``after`` samples, else 1.

    Rise ``sin^2(pi (i + 0.5) / (2 before))`` and the neighbour's fall ``cos^2`` of the same argument sum to 1 over a
    shared overlap; every value is > 0.
    """
    w = torch.ones(length, dtype=torch.float32)
    if before > 0:
        i = torch.arange(before, dtype=torch.float64)
        w[:before] = torch.sin(math.pi * (i + 0.5) / (2 * before)).pow(2).float()
    if after > 0:
        i = torch.arange(after, dtype=torch.float64)
        w[length - after :] = torch.minimum(
            w[length - after :], torch.cos(math.pi * (i + 0.5) / (2 * after)).pow(2).float()
        )
    return w


def _axis_tiles(size: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int, torch.Tensor]]:
    """Per axis: ``(start, end, weights)`` for each span."""
    spans = _axis_spans(size, tile, overlap, multiple)
    out = []
    for i, (s, e) in enumerate(spans):
        before = spans[i - 1][1] - s if i > 0 else 0  # overlap with the previous span
        after = e - spans[i + 1][0] if i + 1 < len(spans) else 0
        out.append((s, e, _ramp(e - s, before, after)))
    return out


def make_tiles(
    height: int, width: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, multiple: int = 8
) -> list[Tile]:
    """The tile layout of an ``height x width`` image (row-major order).

    Args:
        height: image height in pixels.
        width: image width in pixels.
        tile: largest tile edge (rounded down to a multiple of ``multiple``); an axis shorter than ``tile + multiple``
            is one span; spans are shortened where the same number of them still covers the axis.
        overlap: minimum overlap between neighbouring tiles (rounded up to a multiple of ``multiple``), at most half
            the tile.
        multiple: alignment of tile origins and sizes (8 for a network with three 2x down-samplings).

    Returns:
        The :class:`Tile` list; one tile when the image fits in one.
    """
    tile, overlap = _round_tile(tile, overlap, multiple)
    rows = _axis_tiles(height, tile, overlap, multiple)
    cols = _axis_tiles(width, tile, overlap, multiple)
    return [Tile(y0, y1, x0, x1, wy, wx) for y0, y1, wy in rows for x0, x1, wx in cols]


def downscale_to_area(x: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """Downscale ``(N, C, H, W)`` to at most ``max_pixels`` pixels (aspect ratio kept); smaller ones unchanged.

    Antialiased bicubic, clamped to the input's own value range (so [0, 1] stays [0, 1] and linear stays >= 0). Of the
    filters tried for the global-statistics pass (area, antialiased bilinear, 2x2/3x3 box, antialiased bicubic) it
    kept the statistics closest to the full-resolution ones on the sample photos: a sharper filter keeps more of the
    fine detail that early instance norms measure, and ``area`` at a non-integer factor mixes 1- and 2-pixel
    averages, which changes the local statistics irregularly.
    """
    h, w = x.shape[-2:]
    if h * w <= max_pixels:
        return x
    scale = math.sqrt(max_pixels / (h * w))
    size = (max(1, math.floor(h * scale)), max(1, math.floor(w * scale)))
    xf = x.float()
    small = F.interpolate(xf, size=size, mode='bicubic', align_corners=False, antialias=True)
    lo = xf.amin(dim=(-2, -1), keepdim=True)
    hi = xf.amax(dim=(-2, -1), keepdim=True)
    return torch.minimum(torch.maximum(small, lo), hi).to(x.dtype)


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit='tile', leave=False)


def tiled_forward(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    multiple: int = 8,
    extra: dict[str, torch.Tensor] | None = None,
    before_tile: Callable[[Tile], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Apply an image-to-image function tile by tile; the image and the result stay on the CPU.

    Every tile runs independently: a network with instance norm normalises each tile by its own statistics (use
    :class:`GlobalStatsTiler` for the FeedbackUNet).

    Args:
        fn: ``fn(tile, **extra_tiles) -> (N, C_out, h, w)``; called under ``torch.no_grad()`` with a
            ``(N, C, h, w)`` tile on ``device`` in ``dtype``. Same spatial size in and out.
        x: ``(N, C, H, W)`` float tensor on the CPU (any value convention; it is only cut and moved).
        tile: tile edge in pixels, see :func:`make_tiles`.
        overlap: minimum overlap in pixels.
        device: where ``fn`` runs (default: ``x``'s device).
        dtype: dtype of the tiles sent to ``fn`` (default: ``x``'s); the result is always float32.
        multiple: tile alignment, see :func:`make_tiles`.
        extra: optional keyword tensors ``(N, C_k, H, W)`` cut with the same windows and passed to ``fn`` (e.g.
            external perception ``maps``).
        before_tile: optional callback receiving each :class:`Tile` just before ``fn`` runs on it.
        progress: show a tqdm bar over the tiles.

    Returns:
        ``(N, C_out, H, W)`` float32 on the CPU: the tile outputs blended with the raised-cosine windows.
    """
    if x.dim() != 4:
        raise ValueError(f'tiled_forward: expected an (N, C, H, W) tensor, got shape {tuple(x.shape)}')
    extra = dict(extra or {})
    for name, t in extra.items():
        if t.dim() != 4 or t.shape[0] != x.shape[0] or t.shape[-2:] != x.shape[-2:]:
            raise ValueError(f'tiled_forward: extra input {name!r} must be (N, C, {x.shape[2]}, {x.shape[3]})')
    device = x.device if device is None else torch.device(device)
    dtype = x.dtype if dtype is None else dtype
    n, _, h, w = x.shape
    tiles = make_tiles(h, w, tile, overlap, multiple)
    out = weight = None
    with torch.no_grad():
        for t in _progress(tiles, progress and len(tiles) > 1, 'tiles'):
            win = (Ellipsis, slice(t.y0, t.y1), slice(t.x0, t.x1))
            inputs = x[win].to(device=device, dtype=dtype).contiguous()
            kwargs = {k: v[win].to(device=device, dtype=dtype).contiguous() for k, v in extra.items()}
            if before_tile is not None:
                before_tile(t)
            y = fn(inputs, **kwargs)
            if y.dim() != 4 or y.shape[0] != n or y.shape[-2:] != inputs.shape[-2:]:
                raise ValueError(
                    f'tiled_forward: fn must keep (N, *, h, w) = ({n}, *, {t.y1 - t.y0}, {t.x1 - t.x0}), got '
                    f'{tuple(y.shape)}'
                )
            y = y.detach().to(device='cpu', dtype=torch.float32)
            if out is None:
                out = torch.zeros(n, y.shape[1], h, w, dtype=torch.float32)
                weight = torch.zeros(1, 1, h, w, dtype=torch.float32)
            wt = (t.wy[:, None] * t.wx[None, :])[None, None]
            out[win] += y * wt
            weight[win] += wt
    return out / weight


# ---------------------------------------------------------------------------------------------- global statistics
class NormStats(NamedTuple):
    """Per-channel statistics of one instance-norm call: ``mean`` and biased ``var``, each ``(N, C)`` float32."""

    mean: torch.Tensor
    var: torch.Tensor


class GlobalContext(NamedTuple):
    """What the global pass recorded.

    Attributes:
        stats: module name -> list of :class:`NormStats`, one per call of that instance-norm module, in call order
            (the FeedbackUNet's decoder norms are called ``num_iter`` times per forward); for an ``image_wide``
            module (see :func:`instance_norm_modules`) the list holds its recorded outputs instead.
        guidance: the guidance vectors ``(N, D)`` in call order (empty unless the network got a guidance callable).
        size: ``(h, w)`` of the (downscaled) image the statistics were measured on.
    """

    stats: dict[str, list[NormStats]]
    guidance: list[torch.Tensor]
    size: tuple[int, int]


def instance_norm_modules(net: nn.Module) -> dict[str, nn.Module]:
    """The modules of ``net`` whose output depends on the whole image, by name: every ``nn.InstanceNorm2d`` that
    normalises with per-image statistics, and every module marked ``image_wide = True`` (e.g. the spatial mean that
    drives the learned camera curve, :class:`~llmhdr_basicsr.archs.crf_basis.ImageMean`; its output is recorded and
    replayed as a whole).

    An instance norm with ``track_running_stats=True`` in eval mode uses its running (dataset-wide) statistics, which
    are already the same for every tile; it is left out.
    """
    return {
        name: m
        for name, m in net.named_modules()
        if (isinstance(m, nn.InstanceNorm2d) and (m.training or not m.track_running_stats))
        or getattr(m, 'image_wide', False)
    }


def _normalise(m: nn.InstanceNorm2d, x: torch.Tensor, stats: NormStats) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` (then the affine part, if any) with given ``(N, C)`` statistics."""
    if stats.mean.shape != x.shape[:2]:
        raise RuntimeError(
            f'GlobalStatsTiler: recorded statistics have shape {tuple(stats.mean.shape)}, the feature map '
            f'{tuple(x.shape[:2])}; the batch size or the network changed between the global pass and the tiles'
        )
    y = torch.sub(x, stats.mean.to(x.dtype)[..., None, None])  # one new tensor, then in place (memory per tile)
    y.mul_(torch.rsqrt(stats.var + m.eps).to(x.dtype)[..., None, None])
    if m.affine:
        y.mul_(m.weight.to(x.dtype)[None, :, None, None]).add_(m.bias.to(x.dtype)[None, :, None, None])
    return y


class _NormPatch:
    """Replaces the ``forward`` of each per-image instance-norm module while active: ``'record'`` or ``'replay'``.

    The replacement is an instance attribute removed on exit, so the network is unchanged afterwards and nothing
    enters its ``state_dict``. Calls are counted per module; :meth:`new_image` resets the counters.
    """

    def __init__(self, net: nn.Module) -> None:
        self.modules = instance_norm_modules(net)
        self.mode = 'record'
        self.stats: dict[str, list[NormStats]] = {}
        self.calls: dict[str, int] = {}

    @contextlib.contextmanager
    def active(self, mode: str, stats: dict[str, list[NormStats]] | None = None) -> Iterator[_NormPatch]:
        self.mode = mode
        self.stats = {k: [] for k in self.modules} if mode == 'record' else stats
        for name, m in self.modules.items():
            if 'forward' in m.__dict__:
                raise RuntimeError(f'GlobalStatsTiler: module {name!r} is already patched (nested tilers?)')
        for name, m in self.modules.items():
            m.forward = functools.partial(self._forward, name, m)
        try:
            self.new_image()
            yield self
        finally:
            for m in self.modules.values():
                m.__dict__.pop('forward', None)

    def new_image(self) -> None:
        """Reset the per-module call counters (before every network call)."""
        self.calls = dict.fromkeys(self.modules, 0)

    def check_complete(self) -> None:
        """After a replayed network call: every recorded statistic was used once (the same call sequence)."""
        for name, count in self.calls.items():
            if count != len(self.stats.get(name, [])):
                raise RuntimeError(
                    f'GlobalStatsTiler: {name!r} was called {count} times on a tile but {len(self.stats[name])} times '
                    'in the global pass; the network must make the same calls for every input size'
                )

    def _forward(self, name: str, m: nn.InstanceNorm2d, x: torch.Tensor) -> torch.Tensor:
        k = self.calls[name]
        self.calls[name] = k + 1
        if not isinstance(m, nn.InstanceNorm2d):  # an image-wide module: its whole output is the statistic
            if self.mode == 'record':
                out = type(m).forward(m, x)
                self.stats[name].append(out.detach())
                return out
            recorded = self.stats.get(name, [])
            if k >= len(recorded):
                raise RuntimeError(f'GlobalStatsTiler: {name!r} called more often on a tile than in the global pass')
            return recorded[k].to(x.dtype)
        if self.mode == 'record':
            xf = x.float()
            s = NormStats(xf.mean(dim=(2, 3)), xf.var(dim=(2, 3), unbiased=False))
            self.stats[name].append(s)
            return _normalise(m, x, s)
        recorded = self.stats.get(name, [])
        if k >= len(recorded):
            raise RuntimeError(
                f'GlobalStatsTiler: {name!r} called {k + 1} times on a tile but only {len(recorded)} times in the '
                'global pass; the network must make the same calls for every input size'
            )
        return _normalise(m, x, recorded[k])


class GlobalStatsTiler:
    """Tiled inference for networks with instance norm and global guidance; every tile uses the global statistics.

    See the module docstring for the method and its limits. Use it as a callable::

        tiler = GlobalStatsTiler(net, tile=512, overlap=32, device='cuda:0')
        y = tiler(x)                  # x: (1, 3, H, W) on the CPU -> y: (1, C, H, W) float32 on the CPU

    or in two steps (the context manager is the primitive)::

        ctx = tiler.global_pass(x)    # records instance-norm statistics and guidance on a downscaled copy
        with tiler.frozen(ctx) as patch:
            patch.new_image()         # before each network call
            y_tile = net(x_tile)      # every instance norm uses the recorded statistics, in call order

    The network must be in eval mode (``net.eval()``); its parameters are not modified, and nothing stays patched
    after a call. An image that fits in one tile is processed by one plain call (identical to untiled inference).

    Args:
        net: the network, already on ``device`` and in ``dtype``; called as ``net(x, guidance=..., maps=...)`` (each
            keyword only when given). A list/tuple output (deep supervision) gives its last element.
        tile: tile edge in pixels (see :func:`make_tiles`).
        overlap: minimum overlap between tiles in pixels.
        global_size: the global pass sees the image downscaled to at most ``global_size ** 2`` pixels; None =
            ``tile`` (the area, hence the memory, of one tile); ``<= 0`` = no downscaling (statistics of the full
            image: tiled == untiled up to the receptive-field border effect, but the whole image passes through the
            network once, with the memory of untiled inference).
        device: where the network runs (default: the device of its first parameter, else the CPU).
        dtype: dtype of the tiles (default float32; float16 only on a GPU, see
            :func:`llmhdr_basicsr.utils.device.check_half`).
        multiple: tile alignment (8 for the FeedbackUNet's three 2x poolings).
        progress: show a tqdm bar over the tiles.
    """

    def __init__(
        self,
        net: nn.Module,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        global_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        multiple: int = 8,
        progress: bool = False,
    ) -> None:
        _round_tile(tile, overlap, multiple)  # validate early
        self.net = net
        self.tile, self.overlap, self.multiple = int(tile), int(overlap), int(multiple)
        self.global_size = self.tile if global_size is None else int(global_size)
        if device is None:
            first = next(net.parameters(), None)
            device = first.device if first is not None else torch.device('cpu')
        self.device, self.dtype, self.progress = torch.device(device), dtype, progress
        self._patch = _NormPatch(net)

    def _call(self, x: torch.Tensor, guidance, maps: torch.Tensor | None) -> torch.Tensor:
        kwargs = {}
        if guidance is not None:
            kwargs['guidance'] = guidance
        if maps is not None:
            kwargs['maps'] = maps
        out = self.net(x, **accepted_kwargs(self.net, kwargs))
        return out[-1] if isinstance(out, (list, tuple)) else out

    def downscale(self, x: torch.Tensor) -> torch.Tensor:
        """The copy the global pass sees: :func:`downscale_to_area` to ``global_size ** 2`` pixels (all if <= 0)."""
        return x if self.global_size <= 0 else downscale_to_area(x, self.global_size**2)

    def global_pass(self, x: torch.Tensor, guidance=None, maps: torch.Tensor | None = None) -> GlobalContext:
        """Run the network once on the downscaled image and record its global quantities.

        Args:
            x: ``(N, C, H, W)`` input on the CPU (the network's input convention).
            guidance: None, a ``(N, D)`` tensor, or a callable ``guidance(prev)`` as the FeedbackUNet accepts; a
                callable is evaluated here (on the downscaled image and its outputs) and its results are replayed,
                in the same order, for every tile.
            maps: optional external ``(N, 3, H, W)`` perception maps (downscaled with the image).

        Returns:
            The :class:`GlobalContext`.
        """
        small = self.downscale(x).to(device=self.device, dtype=self.dtype)
        small_maps = None if maps is None else self.downscale(maps).to(device=self.device, dtype=self.dtype)
        recorded: list[torch.Tensor] = []
        g = guidance
        if callable(guidance):

            def g(prev):
                v = guidance(prev)
                recorded.append(v.detach())
                return v

        with torch.no_grad(), self._patch.active('record') as patch:
            self._call(small, g, small_maps)
            stats = patch.stats
        return GlobalContext(stats, recorded, tuple(small.shape[-2:]))

    @contextlib.contextmanager
    def frozen(self, ctx: GlobalContext) -> Iterator[_NormPatch]:
        """Within the block every instance-norm call of the network uses the statistics of ``ctx``, in call order.

        Call ``patch.new_image()`` before each network call and ``patch.check_complete()`` after it (``__call__``
        does both).
        """
        with self._patch.active('replay', ctx.stats) as patch:
            yield patch

    def __call__(self, x: torch.Tensor, guidance=None, maps: torch.Tensor | None = None) -> torch.Tensor:
        """Tiled forward with frozen global statistics.

        Args:
            x: ``(N, C, H, W)`` float input on the CPU in the network's input convention (FeedbackUNet G_Y:
                display-referred sRGB LDR in [0, 1]; G_X: mu-law HDR in [0, 1]).
            guidance: see :meth:`global_pass`.
            maps: optional external ``(N, 3, H, W)`` perception maps at the input size.

        Returns:
            ``(N, C_out, H, W)`` float32 on the CPU, in the network's output convention (e.g. mu-law HDR in [0, 1]).
        """
        if x.dim() != 4:
            raise ValueError(f'GlobalStatsTiler: expected an (N, C, H, W) tensor, got shape {tuple(x.shape)}')
        h, w = x.shape[-2:]
        extra = None if maps is None else {'maps': maps}
        if len(make_tiles(h, w, self.tile, self.overlap, self.multiple)) == 1:  # fits in one tile: one plain call
            with torch.no_grad():
                m = None if maps is None else maps.to(device=self.device, dtype=self.dtype)
                y = self._call(x.to(device=self.device, dtype=self.dtype), guidance, m)
            return y.detach().to(device='cpu', dtype=torch.float32)
        if not self._patch.modules and not callable(guidance):  # nothing image-wide to share: plain tiling
            return tiled_forward(lambda t, **kw: self._call(t, guidance, kw.get('maps')), x, self.tile, self.overlap,
                                 self.device, self.dtype, self.multiple, extra, None, self.progress)  # fmt: skip

        ctx = self.global_pass(x, guidance, maps)
        replay = guidance
        if callable(guidance) and ctx.guidance:
            counter = [0]

            def replay(prev):  # the global pass's vectors, in the same order, whatever the tile shows
                k = min(counter[0], len(ctx.guidance) - 1)
                counter[0] += 1
                return ctx.guidance[k]

        with self.frozen(ctx) as patch:

            def before(_t: Tile) -> None:
                patch.new_image()
                if callable(guidance) and ctx.guidance:
                    counter[0] = 0

            def fn(xt: torch.Tensor, **kw) -> torch.Tensor:
                y = self._call(xt, replay, kw.get('maps'))
                patch.check_complete()
                return y

            return tiled_forward(fn, x, self.tile, self.overlap, self.device, self.dtype, self.multiple, extra,
                                 before, self.progress)  # fmt: skip
