"""Paper-scale LDR/HDR datasets as they are distributed: their folder layouts and HDR encodings.

One entry point for every format in :data:`DATASET_FORMATS`:

- :func:`list_pairs` ``(root, fmt, subset=None)`` -> the dataset's :class:`Pair` s (HDR file, LDR file or ``None``,
  side-car file), checked against the documented layout (a wrong folder is a one-line ``FileNotFoundError`` /
  ``ValueError`` naming what is missing and what to pass instead);
- :func:`read_hdr_frame` ``(path, fmt)`` -> the HDR ground truth as ``(H, W, 3)`` float32 **linear** RGB,
  BT.709 primaries unless asked otherwise, relative scale (see each format), finite and >= 0.

LDR inputs are never decoded here: they are display-referred images that :func:`llmhdr_basicsr.utils.hdr_io.read_ldr`
reads as they are (the model's input convention). ``scripts/prepare_data.py convert`` uses both functions to turn a
dataset into the project's layout (``OUT/hdr`` linear EXR + ``OUT/ldr``); ``docs/datasets.md`` has the commands.

What the layouts and encodings rest on is written in each format's description; what could not be confirmed from the
public sources is said there too.
"""

from __future__ import annotations

import os
import os.path as osp
from dataclasses import dataclass

import numpy as np

from llmhdr_basicsr.utils import transfer as tf
from llmhdr_basicsr.utils.hdr_io import (
    HDR_EXTENSIONS,
    LDR_EXTENSIONS,
    ImageReadError,
    extension,
    read_coded_hdr,
    read_hdr,
    read_image_raw,
)

#: The gamma of the NTIRE 2021 HDR challenge data (its metric linearises ground truth and results with ``x ** 2.24``).
NTIRE_GAMMA = 2.24


@dataclass(frozen=True)
class Pair:
    """One scene of a dataset.

    ``name``: output stem, unique within the listing. ``hdr``: the ground-truth HDR file. ``ldr``: the LDR input, or
    ``None`` for HDR-only datasets (HDR-Synth). ``sidecar``: an extra file needed to decode the HDR (NTIRE's
    ``{id}_alignratio.npy``), else ``None``.
    """

    name: str
    hdr: str
    ldr: str | None
    sidecar: str | None = None


@dataclass(frozen=True)
class DatasetFormat:
    """How a dataset is distributed. ``coded``: its HDR files are integer-coded and must be decoded by
    :func:`read_hdr_frame` (else they are float HDR files that :func:`~llmhdr_basicsr.utils.hdr_io.read_hdr` reads
    as they are). ``subsets``: the official parts :func:`list_pairs` can list (the first is the default)."""

    name: str
    title: str
    hdr: str
    ldr: str
    layout: str
    coded: bool
    subsets: tuple[str, ...] = ('all',)


DATASET_FORMATS: dict[str, DatasetFormat] = {
    f.name: f
    for f in (
        DatasetFormat(
            'hdrtv',
            'HDRTV1K (Chen et al., ICCV 2021, HDRTVNet)',
            '16-bit PNG frames extracted with ffmpeg from HDR10 videos (10-bit, PQ = SMPTE ST 2084, BT.2020 '
            'primaries); code value = png / 65535. Decoded to linear light, cd/m² / white_nits (default 203 = BT.2408 '
            'reference white), converted to BT.709 (negatives clipped) unless keep_bt2020. Not documented: the '
            "YUV->RGB matrix and range ffmpeg used (taken as ffmpeg's full-range RGB output)",
            'PNG frames of the YouTube SDR versions (BT.709, display gamma; 8-bit expected, 16-bit also read): used '
            'as they are',
            'ROOT/training_set/{train_hdr,train_sdr}/<name>.png (1235 pairs) and ROOT/test_set/{test_hdr,test_sdr}/'
            '<name>.png (117 pairs), paired by file name',
            coded=True,
            subsets=('train', 'test'),
        ),
        DatasetFormat(
            'ntire',
            'NTIRE 2021 HDR challenge, track 1 (single frame)',
            '<id>_gt.png: 16-bit PNG written as round(hdr * alignratio), alignratio = 65535 / max(hdr) saved in '
            '<id>_alignratio.npy; png / alignratio is the gamma-encoded HDR, linear = (png / alignratio) ** 2.24 (the '
            "challenge's own metric and visualisation linearise it so). Relative scale as stored, primaries not stated "
            '(taken as BT.709)',
            '<id>_medium.png: 8-bit PNG, gamma 2.24: used as it is',
            'ROOT/**/<id>_gt.png with <id>_medium.png and <id>_alignratio.npy in the same folder or anywhere under '
            'ROOT (e.g. gt/, medium/, alignratio/ sub-folders); <id> unique under ROOT',
            coded=True,
        ),
        DatasetFormat(
            'hdr-real',
            'HDR-Real (Liu et al., CVPR 2020, SingleHDR training data)',
            'HDR_gt/<id>.hdr: Radiance RGBE, linear, relative scale: read as it is',
            'LDR_in/<id>.jpg: 8-bit JPEG from real cameras: used as it is',
            'ROOT/HDR-Real/{HDR_gt,LDR_in}/ (ROOT = the unpacked SingleHDR_training_data folder; ROOT may also be '
            'HDR-Real itself), paired by file name',
            coded=False,
            subsets=('train',),
        ),
        DatasetFormat(
            'hdr-synth',
            'HDR-Synth (Liu et al., CVPR 2020, SingleHDR training data)',
            'public HDR collections as distributed (.hdr Radiance RGBE and .exr OpenEXR, linear, relative scale): read '
            'as they are',
            'none: SingleHDR draws LDRs on the fly with camera curves; use prepare_data.py synth',
            'ROOT/HDR-Synth/<collection>/.../<name>.{hdr,exr} (e.g. funt/hdr/S0350.hdr, fairchild/LabBooth.exr); '
            'output names are the relative paths with "/" replaced by "_"',
            coded=False,
            subsets=('train',),
        ),
        DatasetFormat(
            'gta-hdr',
            'GTA-HDR (Barua et al., WACV 2025)',
            '.hdr (Radiance RGBE), 512x512: read as they are',
            '.png, 25 per HDR (exposures EV 0, +-1 ... +-4 and contrast levels): used as they are',
            'not published (the data is shared on request): pass the folders to prepare_data.py split --ldr DIR '
            '--hdr DIR --scene-regex REGEX; no conversion is needed',
            coded=False,
        ),
    )
}


def get_format(fmt: str) -> DatasetFormat:
    """The :class:`DatasetFormat` called ``fmt``; a ``ValueError`` naming the known formats otherwise."""
    if fmt not in DATASET_FORMATS:
        raise ValueError(f'Unknown dataset format {fmt!r}; choose one of {", ".join(DATASET_FORMATS)}')
    return DATASET_FORMATS[fmt]


# ----------------------------------------------------------------------------------------------------------------------
# Listing pairs
# ----------------------------------------------------------------------------------------------------------------------


def _files(folder: str, extensions: tuple[str, ...]) -> dict[str, str]:
    """``{stem: path}`` of the files directly in ``folder`` with one of ``extensions`` (hidden files skipped)."""
    found: dict[str, str] = {}
    for n in sorted(os.listdir(folder)):
        path = osp.join(folder, n)
        if n.startswith('.') or extension(n) not in extensions or not osp.isfile(path):
            continue
        stem = osp.splitext(n)[0]
        if stem in found:
            raise ValueError(f'{folder}: two files named {stem!r} ({osp.basename(found[stem])}, {n}); keep one')
        found[stem] = path
    return found


def _pair_by_stem(hdr_dir: str, ldr_dir: str, hdr_ext: tuple[str, ...], fmt: str) -> list[Pair]:
    for d in (hdr_dir, ldr_dir):
        if not osp.isdir(d):
            raise FileNotFoundError(
                f'{fmt}: missing folder {d}; point --root at the dataset folder (layout: {get_format(fmt).layout})'
            )
    hdr, ldr = _files(hdr_dir, hdr_ext), _files(ldr_dir, LDR_EXTENSIONS)
    unpaired = sorted(set(hdr) ^ set(ldr))
    if unpaired:
        raise ValueError(
            f'{fmt}: {len(unpaired)} file(s) without a partner in {hdr_dir} / {ldr_dir}, e.g. {unpaired[:3]}; '
            f'pairs share a file name'
        )
    if not hdr:
        raise ValueError(f'{fmt}: no images in {hdr_dir}')
    return [Pair(stem, hdr[stem], ldr[stem]) for stem in sorted(hdr)]


def _hdrtv_pairs(root: str, subset: str) -> list[Pair]:
    top, part = {'train': ('training_set', 'train'), 'test': ('test_set', 'test')}[subset]
    base = osp.join(root, top)
    return _pair_by_stem(osp.join(base, f'{part}_hdr'), osp.join(base, f'{part}_sdr'), ('.png',), 'hdrtv')


def _ntire_pairs(root: str, subset: str) -> list[Pair]:
    by_name: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        for n in filenames:
            by_name.setdefault(n, []).append(osp.join(dirpath, n))
    gts = sorted(n for n in by_name if n.endswith('_gt.png'))
    if not gts:
        raise FileNotFoundError(f'ntire: no <id>_gt.png under {root} ({get_format("ntire").layout})')

    def one(name: str, gt_dir: str) -> str:
        paths = by_name.get(name, [])
        same = [p for p in paths if osp.dirname(p) == gt_dir]
        if same or len(paths) == 1:
            return (same or paths)[0]
        if not paths:
            raise FileNotFoundError(f'ntire: {name} not found under {root} (needed next to the ground truth {gt_dir})')
        raise ValueError(f'ntire: {name} appears {len(paths)} times under {root}; point --root at one split')

    pairs = []
    for gt in gts:
        if len(by_name[gt]) > 1:
            raise ValueError(f'ntire: {gt} appears {len(by_name[gt])} times under {root}; point --root at one split')
        path = by_name[gt][0]
        scene = gt[: -len('_gt.png')]
        gt_dir = osp.dirname(path)
        pairs.append(Pair(scene, path, one(f'{scene}_medium.png', gt_dir), one(f'{scene}_alignratio.npy', gt_dir)))
    return pairs


def _singlehdr_base(root: str, name: str, marker: str | None) -> str:
    """``ROOT/<name>`` when it exists, else ``ROOT`` itself when it holds the sub-folder ``marker`` (or, without a
    marker, when it is called ``name``)."""
    if osp.isdir(osp.join(root, name)):
        return osp.join(root, name)
    if osp.isdir(osp.join(root, marker)) if marker else osp.basename(osp.normpath(root)) == name:
        return root
    raise FileNotFoundError(
        f'missing {osp.join(root, name)}: point --root at the unpacked SingleHDR_training_data folder (which holds '
        f'{name}/) or at {name}/ itself'
    )


def _hdr_real_pairs(root: str, subset: str) -> list[Pair]:
    base = _singlehdr_base(root, 'HDR-Real', 'HDR_gt')
    return _pair_by_stem(osp.join(base, 'HDR_gt'), osp.join(base, 'LDR_in'), HDR_EXTENSIONS, 'hdr-real')


def _hdr_synth_pairs(root: str, subset: str) -> list[Pair]:
    base = _singlehdr_base(root, 'HDR-Synth', None)
    pairs = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        for n in sorted(filenames):
            if n.startswith('.') or extension(n) not in HDR_EXTENSIONS:
                continue
            rel = osp.relpath(osp.join(dirpath, n), base)
            pairs.append(Pair(osp.splitext(rel)[0].replace(os.sep, '_'), osp.join(dirpath, n), None))
    if not pairs:
        raise FileNotFoundError(f'hdr-synth: no .hdr/.exr files under {base} ({get_format("hdr-synth").layout})')
    return sorted(pairs, key=lambda p: p.name)


def _gta_hdr_pairs(root: str, subset: str) -> list[Pair]:
    raise ValueError(f'gta-hdr: {get_format("gta-hdr").layout}')


_LISTERS = {
    'hdrtv': _hdrtv_pairs,
    'ntire': _ntire_pairs,
    'hdr-real': _hdr_real_pairs,
    'hdr-synth': _hdr_synth_pairs,
    'gta-hdr': _gta_hdr_pairs,
}


def list_pairs(root: str, fmt: str, subset: str | None = None) -> list[Pair]:
    """The scenes of the dataset at ``root`` in format ``fmt``, sorted by name.

    Args:
        root: the dataset folder as unpacked (see the format's ``layout``).
        fmt: a key of :data:`DATASET_FORMATS`.
        subset: one of the format's ``subsets`` (default: the first, e.g. ``'train'`` for HDRTV).

    Raises:
        ValueError: unknown format or subset, files without a partner, duplicate names.
        FileNotFoundError: ``root`` or a folder of the layout is missing.
    """
    spec = get_format(fmt)
    subset = subset or spec.subsets[0]
    if subset not in spec.subsets:
        raise ValueError(f'{fmt}: unknown subset {subset!r}; choose one of {", ".join(spec.subsets)}')
    if not osp.isdir(root):
        raise FileNotFoundError(f'{fmt}: dataset folder does not exist: {root}')
    return _LISTERS[fmt](root, subset)


# ----------------------------------------------------------------------------------------------------------------------
# Reading HDR frames
# ----------------------------------------------------------------------------------------------------------------------


def read_hdrtv_hdr(path: str, white_nits: float = tf.REFERENCE_WHITE_NITS, keep_bt2020: bool = False) -> np.ndarray:
    """One HDRTV1K HDR frame (16-bit PNG, PQ, BT.2020).

    Returns:
        ``(H, W, 3)`` float32 linear RGB, BT.709 primaries (BT.2020 with ``keep_bt2020``; out-of-gamut values clipped
        to 0), relative scale: display luminance in cd/m² divided by ``white_nits`` (default 203).
    """
    out = 'bt2020' if keep_bt2020 else 'bt709'
    return read_coded_hdr(path, 'pq', 'bt2020', out, white_nits=white_nits, bit_depth=16)


def ntire_alignratio_path(gt_path: str) -> str:
    """``.../<id>_gt.png`` -> ``.../<id>_alignratio.npy`` (same folder)."""
    folder, name = osp.split(str(gt_path))
    if not name.endswith('_gt.png'):
        raise ValueError(f'{gt_path}: an NTIRE ground truth is named <id>_gt.png')
    return osp.join(folder, name[: -len('_gt.png')] + '_alignratio.npy')


def read_ntire_alignratio(path: str) -> float:
    """The scalar of an NTIRE ``<id>_alignratio.npy`` (finite and > 0, else ``ValueError`` naming the file)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'NTIRE alignment ratio not found: {path} (it sits next to <id>_gt.png)')
    try:
        value = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f'{path}: not a .npy array ({err})') from err
    if value.size != 1 or not np.isfinite(value).all() or float(value.reshape(-1)[0]) <= 0:
        raise ValueError(f'{path}: expected one finite alignment ratio > 0, got {value!r}')
    return float(value.reshape(-1)[0])


def read_ntire_gt(path: str, alignratio: str | None = None, linearise: bool = True) -> np.ndarray:
    """One NTIRE 2021 HDR ground truth: ``<id>_gt.png`` (uint16) with its ``<id>_alignratio.npy``.

    Args:
        path: the 16-bit PNG.
        alignratio: the ratio file (default: next to ``path``).
        linearise: apply ``x ** 2.24`` (the challenge's gamma); ``False`` gives ``png / alignratio`` as stored.

    Returns:
        ``(H, W, 3)`` float32 RGB, linear (gamma-encoded when not ``linearise``), relative scale as stored; the
        primaries are not documented (taken as BT.709).
    """
    raw = read_image_raw(path)
    if raw.dtype != np.uint16:
        raise ImageReadError(f'{path} holds {raw.dtype} data; an NTIRE ground truth is a 16-bit PNG')
    ratio = read_ntire_alignratio(alignratio or ntire_alignratio_path(path))
    hdr = raw.astype(np.float64) / ratio
    return (tf.gamma_to_linear(hdr, NTIRE_GAMMA) if linearise else hdr).astype(np.float32)


def read_hdr_frame(
    path: str,
    fmt: str,
    sidecar: str | None = None,
    white_nits: float = tf.REFERENCE_WHITE_NITS,
    keep_bt2020: bool = False,
    linearise: bool = True,
) -> np.ndarray:
    """The HDR ground truth ``path`` of a dataset in format ``fmt``, decoded.

    Args:
        path: an HDR file of the dataset (``Pair.hdr``).
        fmt: a key of :data:`DATASET_FORMATS`.
        sidecar: ``Pair.sidecar`` (NTIRE alignment ratio; default: next to ``path``).
        white_nits: HDRTV only: PQ luminance that becomes 1.0.
        keep_bt2020: HDRTV only: keep BT.2020 primaries instead of converting to BT.709.
        linearise: NTIRE only: remove the 2.24 gamma.

    Returns:
        ``(H, W, 3)`` float32 linear RGB (relative scale per format, see :data:`DATASET_FORMATS`), finite, >= 0.
    """
    get_format(fmt)
    if fmt == 'hdrtv':
        return read_hdrtv_hdr(path, white_nits, keep_bt2020)
    if fmt == 'ntire':
        return read_ntire_gt(path, sidecar, linearise)
    if extension(path) not in HDR_EXTENSIONS:
        raise ImageReadError(
            f'{path}: {fmt} HDR files are float HDR ({", ".join(HDR_EXTENSIONS)}), not {extension(path)!r}'
        )
    return read_hdr(path)
