"""The ``val.tile`` option of BasicSR's test/validation path: parsed and checked once, with errors naming the option.

``CycleHDRModel.test()`` runs its generators through :class:`llmhdr_basicsr.utils.tiling.GlobalStatsTiler` (the
code behind ``llmhdr-infer --tile``) when the ``val`` block asks for it, like Real-ESRGAN's ``tile``/``tile_pad``::

    val:
      tile: auto                                      # the default: images above 2 MP tiled as llmhdr-infer does
      tile: 512                                       # shorthand: tile edge, default overlap (32 px)
      tile: {size: 512, overlap: 32}                  # the same, spelt out
      tile: {size: 512, overlap: 32, global_size: 0}  # norm statistics of the full image (exact, more memory)
      tile: 0                                         # off, every image whole (also: null, false)

``global_size`` has the meaning of ``llmhdr-infer --tile-global-size``: the global pass sees the image downscaled to at
most ``global_size ** 2`` pixels (default: ``size``, i.e. the area of one tile; ``0`` = the full image).

``auto`` (also the value when the key is left out) tiles only images of more than :data:`AUTO_TILE_PIXELS` (2 MP)
pixels, with the defaults of ``llmhdr-infer`` (tile 512, overlap 32, statistics from a 512 x 512 copy): the usual
small validation images run whole (exactly as before), a 4K validation image does not exhaust the device memory.
Networks with image-wide operations other than instance norm (see :mod:`llmhdr_basicsr.utils.tiling`) should set
``tile: null`` when validated on large images.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from llmhdr_basicsr.utils.options import check_keys
from llmhdr_basicsr.utils.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, make_tiles

TILE_KEYS = ('size', 'overlap', 'global_size')
AUTO = 'auto'
#: ``tile: auto`` tiles the images with more pixels than this (2 MP: a 1920 x 1080 image still runs whole).
AUTO_TILE_PIXELS = 2_000_000
#: Smallest tile edge: two FeedbackUNet pooling blocks (tiles are aligned to multiples of 8).
MIN_TILE = 16


class TileOption(NamedTuple):
    """A checked ``val.tile`` setting (arguments of :class:`~llmhdr_basicsr.utils.tiling.GlobalStatsTiler`).

    Attributes:
        size: tile edge in pixels (>= 16).
        overlap: minimum overlap between neighbouring tiles in pixels (>= 0, at most half the tile after rounding to
            multiples of 8).
        global_size: edge of the global-statistics pass (None = ``size``; 0 = the full image).
    """

    size: int
    overlap: int
    global_size: int | None


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{where} must be an integer number of pixels (or auto), got {value!r}')
    return value


def parse_tile_option(value: Any, where: str = 'val.tile') -> TileOption | None:
    """Parse and check a ``tile`` option (see the module docstring for the accepted forms).

    Args:
        value: the YAML value: None / 0 / False (off), ``'auto'`` (the ``llmhdr-infer`` defaults; which images
            are tiled: :func:`tile_min_pixels`), an int tile edge, or a dict with ``size`` and optionally
            ``overlap`` (default 32) and ``global_size`` (default: ``size``; 0 = full image).
        where: the option's name in the YAML, used in error messages.

    Returns:
        The :class:`TileOption`, or None when tiling is off.

    Raises:
        TypeError: a value of the wrong type (e.g. a string, a float, ``true``).
        KeyError: an unknown key in the dict form (with a did-you-mean hint) or a missing ``size``.
        ValueError: a negative size, a tile smaller than 16 pixels, a negative overlap, or an overlap larger than
            half the tile.
    """
    if value is None or value is False or (isinstance(value, int) and not isinstance(value, bool) and value == 0):
        return None
    if value == AUTO:
        return TileOption(DEFAULT_TILE, DEFAULT_OVERLAP, None)
    if isinstance(value, dict):
        check_keys(value, TILE_KEYS, where, strict=True)
        if 'size' not in value:
            raise KeyError(f'{where} needs a size (tile edge in pixels), e.g. {where}: {{size: 512, overlap: 32}}')
        if value['size'] in (None, 0):
            return None
        size = _int(value['size'], f'{where}.size')
        overlap = _int(value.get('overlap', DEFAULT_OVERLAP), f'{where}.overlap')
        global_size = value.get('global_size')
        if global_size is not None:
            global_size = _int(global_size, f'{where}.global_size')
            if global_size < 0:
                raise ValueError(
                    f'{where}.global_size must be >= 0 (0 = statistics of the full image), got {global_size}'
                )
        size_name, overlap_name = f'{where}.size', f'{where}.overlap'
    else:
        size = _int(value, where)
        overlap, global_size = DEFAULT_OVERLAP, None
        size_name, overlap_name = where, f'{where} = {size}: the default overlap'
    if size < 0:
        raise ValueError(f'{size_name} must be > 0 (or 0 / null for no tiling), got {size}')
    if size < MIN_TILE:
        raise ValueError(f'{size_name} = {size} is too small: use at least {MIN_TILE} pixels, or 0 for no tiling')
    if overlap < 0:
        raise ValueError(f'{overlap_name} must be >= 0, got {overlap}')
    try:  # the rules of the tile layout itself: multiples of 8, overlap at most half the tile
        make_tiles(size, size, size, overlap)
    except ValueError as err:
        hint = '' if isinstance(value, dict) else f' (give it explicitly: {where}: {{size: {size}, overlap: ...}})'
        raise ValueError(f'{overlap_name} ({overlap}) is too large for the tile{hint}: '
                         f'{str(err).removeprefix("tiling: ")}') from err  # fmt: skip
    return TileOption(size, overlap, global_size)


def tile_min_pixels(value: Any) -> int:
    """Images with at most this many pixels run untiled under the ``tile`` option ``value``: :data:`AUTO_TILE_PIXELS`
    for ``'auto'``, 0 (every image tiled) for an explicit tile size."""
    return AUTO_TILE_PIXELS if value == AUTO else 0
