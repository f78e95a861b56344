"""The prepared training store: sub-images (tiles) of large frames plus per-source-frame statistics.

At paper scale (4K HDR frames) decoding whole frames for every random crop is the bottleneck of training; BasicSR's
answer is to cut sub-images once (``scripts/data_preparation/extract_subimages.py``) and list them in a meta-info
file. Plain tiles, however, lose what the loader computes on the **whole** frame: the ``hdr_norm`` scale, the
virtual camera's exposure, the digest and whole-image view of an LDR photo. A store keeps those per source frame,
next to the tiles, so that every tile of a frame is normalised, exposed and viewed as the whole frame would be.

Layout (written by ``scripts/prepare_data.py store``, read by the datasets when ``dataroot_*`` points at it)::

    STORE/store.json            format, version, kind ('hdr' or 'ldr'), the options it was built with, the source
                                folder, the frame and tile counts (written last: its presence marks a finished store)
    STORE/meta_info_store.txt   one line per tile, tab-separated: tile path (relative to STORE), source frame id,
                                crop box "y0,x0,y1,x1" in pixels of the frame (end exclusive)
    STORE/tiles/<frame>_s001.<ext>   the tiles, BasicSR's rule (crop size, step, threshold size): HDR as float32
                                OpenEXR (exact), LDR with the frame's 8/16-bit code values (PNG)
    STORE/frames/<frame>.npz    per-frame statistics (numpy arrays, no pickle):

        common   ``kind``, ``height``, ``width``, ``digest`` (:func:`image_digest` of the decoded frame), ``options``
                 (JSON of the build options), ``source`` / ``source_size`` / ``source_mtime_ns`` (resume check),
                 ``tile_names`` ``(T,)`` str and ``tile_boxes`` ``(T, 4)`` int64
        HDR      ``norm_scale``: :func:`~llmhdr_basicsr.data.hdr_transforms.hdr_norm_scale` of the whole frame at
                 the store's ``hdr_norm`` percentile (the loader's exact computation);
                 ``peak_sample``: ``(K, 3)`` float32, :func:`~llmhdr_basicsr.utils.camera.peak_rank_sample` of the
                 whole frame, from which :func:`~llmhdr_basicsr.utils.camera.exposure_from_rank_sample` resolves the
                 exposure for a target clip fraction (within ``1 / (K - 1)`` of the whole frame's clipped fraction)
        LDR      ``thumbnail``: ``(G, G, 3)`` uint8, :func:`global_view_np` of the whole frame (the CLIP/SAM view)

Every file is written to a temporary name and renamed; a frame counts as done when its ``.npz`` (written after its
tiles) exists with the same options and source size/mtime, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import os.path as osp
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import Pool

import numpy as np

from llmhdr_basicsr.utils import hdr_io
from llmhdr_basicsr.utils.camera import DEFAULT_RANK_SAMPLES, peak_rank_sample
from llmhdr_basicsr.utils.fileio import atomic_write, atomic_write_bytes
from llmhdr_basicsr.utils.weights import LRUCache

from .dataset_util import global_view_np, image_digest
from .hdr_transforms import DEFAULT_HDR_NORM, hdr_norm_scale

logger = logging.getLogger('basicsr.llmhdr')

STORE_FORMAT = 'llmhdr-training-store'
STORE_VERSION = 1
STORE_INFO = 'store.json'
STORE_META = 'meta_info_store.txt'
TILES_DIR = 'tiles'
FRAMES_DIR = 'frames'
KINDS = ('hdr', 'ldr')
DEFAULT_THUMBNAIL_SIZE = 224  # = UnpairedLDRHDRDataset's default global_size
#: Memory bound of a store's per-frame statistics memo (about 100 KiB per HDR frame, 150 KiB per LDR frame).
STATS_MEMO_BYTES = 256 * 2**20
REBUILD_HINT = 'python scripts/prepare_data.py store --input {source} --output {store}'


# ================================================================================================ reading
@dataclass(frozen=True)
class StoreTile:
    """One tile of a store: ``path`` (absolute), ``frame`` (source frame id), ``box`` ``(y0, x0, y1, x1)``."""

    path: str
    frame: str
    box: tuple[int, int, int, int]


@dataclass
class FrameStats:
    """Per-source-frame statistics of a store (module docstring): whole-frame values shared by all its tiles."""

    frame: str
    kind: str
    height: int
    width: int
    digest: str
    norm_scale: float | None = None  # HDR: hdr_norm_scale of the frame
    peak_sample: np.ndarray | None = None  # HDR: (K, 3) float32, unnormalised
    thumbnail: np.ndarray | None = None  # LDR: (G, G, 3) uint8

    @property
    def nbytes(self) -> int:
        arrays = (a for a in (self.peak_sample, self.thumbnail) if a is not None)
        return 256 + sum(a.nbytes for a in arrays)


def is_store(folder: str) -> bool:
    """True when ``folder`` is a finished training store (holds ``store.json``)."""
    return osp.isfile(osp.join(folder, STORE_INFO))


def frame_stats_path(store: str, frame: str) -> str:
    return osp.join(store, FRAMES_DIR, f'{frame}.npz')


def read_frame_stats(path: str, frame: str) -> FrameStats:
    """Load one ``frames/<frame>.npz``.

    Raises:
        FileNotFoundError: no such file. OSError: unreadable or incomplete (both name the file).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'training store frame statistics file not found: {path}')
    try:
        with np.load(path, allow_pickle=False) as z:
            kind = str(z['kind'])
            return FrameStats(
                frame=frame,
                kind=kind,
                height=int(z['height']),
                width=int(z['width']),
                digest=str(z['digest']),
                norm_scale=float(z['norm_scale']) if kind == 'hdr' else None,
                peak_sample=np.asarray(z['peak_sample'], dtype=np.float32) if kind == 'hdr' else None,
                thumbnail=np.asarray(z['thumbnail'], dtype=np.uint8) if kind == 'ldr' else None,
            )
    except (OSError, ValueError, KeyError) as err:
        raise OSError(f'{path}: unreadable training store frame statistics ({err}); delete it and run '
                      f'prepare_data.py store again to rebuild that frame') from err  # fmt: skip


def parse_store_meta(meta_file: str, store: str) -> list[StoreTile]:
    """The tiles listed in ``meta_info_store.txt`` (module docstring), paths joined to ``store``."""
    tiles = []
    with open(meta_file, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip('\n')
            if not line.strip() or line.startswith('#'):
                continue
            fields = line.split('\t')
            try:
                box = tuple(int(v) for v in fields[2].split(','))
                if len(fields) != 3 or len(box) != 4:
                    raise ValueError
            except (IndexError, ValueError):
                raise ValueError(f'{meta_file}, line {number}: expected "<tile>\\t<frame id>\\ty0,x0,y1,x1", got '
                                 f'{line!r}; rebuild the store with prepare_data.py store') from None  # fmt: skip
            tiles.append(StoreTile(osp.join(store, fields[0]), fields[1], box))
    return tiles


class TrainingStore:
    """A training store opened for reading (module docstring): tile list, crop boxes, memoised frame statistics.

    Args:
        folder: the store folder (``~`` expanded).
        option: the dataset option that named it, for messages (e.g. ``'dataroot_hdr'``).
        kind: ``'hdr'`` or ``'ldr'``: what the option expects.

    Raises:
        FileNotFoundError: the meta file, a tile or a frame statistics file is missing (one line naming the file and
        the command that rebuilds it). ValueError: a store of the other kind, another format version, or no tiles.
    """

    def __init__(self, folder: str, option: str, kind: str) -> None:
        self.folder = folder
        self.option = option
        with open(osp.join(folder, STORE_INFO), encoding='utf-8') as f:
            self.info = json.load(f)
        if self.info.get('format') != STORE_FORMAT or self.info.get('version') != STORE_VERSION:
            raise ValueError(f'{option}: {folder}/{STORE_INFO} is not a version-{STORE_VERSION} {STORE_FORMAT}; '
                             f'rebuild it with {self.rebuild_hint}')  # fmt: skip
        if self.info.get('kind') != kind:
            raise ValueError(f'{option}: {folder} is a training store of {self.info.get("kind")} frames; point '
                             f'{option} at a store of {kind} frames')  # fmt: skip
        self.kind = kind
        meta = osp.join(folder, STORE_META)
        if not osp.isfile(meta):
            raise FileNotFoundError(f'{option}: training store {folder} has no {STORE_META}; finish it with '
                                    f'{self.rebuild_hint}')  # fmt: skip
        self.tiles = parse_store_meta(meta, folder)
        if not self.tiles:
            raise ValueError(f'{option}: {meta} lists no tiles; rebuild the store with {self.rebuild_hint}')
        self._check_files()
        self.paths = [t.path for t in self.tiles]
        self._by_path = {t.path: t for t in self.tiles}
        per_frame = 160 * 2**10
        self._stats = LRUCache(max(STATS_MEMO_BYTES // per_frame, 1))

    @property
    def rebuild_hint(self) -> str:
        return REBUILD_HINT.format(source=self.info.get('source', 'SOURCE_FOLDER'), store=self.folder)

    def _check_files(self) -> None:
        frames = sorted({t.frame for t in self.tiles})
        for frame in frames:
            path = frame_stats_path(self.folder, frame)
            if not osp.isfile(path):
                raise FileNotFoundError(f'{self.option}: training store frame statistics file {path} is missing; '
                                        f'rebuild the missing frames with {self.rebuild_hint} '
                                        f'(it resumes)')  # fmt: skip
        missing = [t.path for t in self.tiles if not osp.isfile(t.path)]
        if missing:
            raise FileNotFoundError(f'{self.option}: {len(missing)} of {len(self.tiles)} tiles of training store '
                                    f'{self.folder} are missing, e.g. {missing[:3]}; rebuild them with '
                                    f'{self.rebuild_hint}')  # fmt: skip

    def __repr__(self) -> str:
        return f'TrainingStore({self.folder!r}, {self.kind}, {len(self.tiles)} tiles)'

    @property
    def hdr_norm(self) -> float | None:
        """The ``hdr_norm`` percentile the store's ``norm_scale`` values were computed at (HDR stores)."""
        return self.info['options'].get('hdr_norm')

    @property
    def thumbnail_size(self) -> int:
        return int(self.info['options']['thumbnail_size'])

    def tile(self, path: str) -> StoreTile:
        return self._by_path[path]

    def frame_stats(self, path: str) -> FrameStats:
        """Statistics of the source frame of the tile at ``path`` (memoised per frame, bounded)."""
        frame = self._by_path[path].frame
        stats = self._stats.get(frame)
        if stats is None:
            stats = read_frame_stats(frame_stats_path(self.folder, frame), frame)
            self._stats.put(frame, stats)
        return stats

    def global_view(self, path: str, size: int) -> tuple[str, np.ndarray]:
        """``(digest, (size, size, 3) uint8 view)`` of the whole source frame of an LDR tile, from its thumbnail.

        The thumbnail is exactly :func:`global_view_np` of the frame at ``thumbnail_size``; a smaller ``size`` is
        resized from it (area-averaged), a larger one would lose detail and is refused at construction.
        """
        stats = self.frame_stats(path)
        view = stats.thumbnail
        if view.shape[0] != size:
            view = global_view_np(view.astype(np.float32) / 255.0, size)
        return stats.digest, view


def open_store(folder: str, option: str, kind: str, meta_option: str | None, opt: dict, name: str):
    """The :class:`TrainingStore` at a ``dataroot_*`` folder, or None when the folder is a plain image folder.

    Raises:
        ValueError: ``meta_option`` is set together with a store, or the folder holds an unfinished store.
    """
    if not is_store(folder):
        if osp.isdir(osp.join(folder, FRAMES_DIR)) and osp.isdir(osp.join(folder, TILES_DIR)):
            raise ValueError(f'{name}: {option} {folder} is an unfinished training store (no {STORE_INFO}); finish '
                             f'it by running prepare_data.py store with the same --input and --output')  # fmt: skip
        return None
    if meta_option and opt.get(meta_option) is not None:
        raise ValueError(f'{name}: option {meta_option} cannot be used with the training store {folder} ({option}): '
                         f'its {STORE_META} lists the tiles; remove {meta_option}')  # fmt: skip
    store = TrainingStore(folder, option, kind)
    logger.info(f'{name}: {option} is {store!r}')
    return store


def check_store_hdr_norm(store: TrainingStore | None, percentile: float | None, option: str, name: str) -> None:
    """A dataset's ``hdr_norm`` must be the percentile the HDR store's scales were computed at (or ``'none'``)."""
    if store is None or percentile is None or store.hdr_norm == percentile:
        return
    raise ValueError(f'{name}: option hdr_norm is {percentile} but the training store {store.folder} ({option}) was '
                     f'built with hdr_norm {store.hdr_norm}; set hdr_norm: {store.hdr_norm}, or rebuild the store '
                     f'with prepare_data.py store --hdr-norm {percentile}')  # fmt: skip


# ================================================================================================ building
def tile_starts(size: int, crop: int, step: int, thresh: int) -> list[int]:
    """Tile offsets along one axis, BasicSR's rule: every ``step``, plus a last tile flush with the border when more
    than ``thresh`` pixels would be left over. An axis shorter than ``crop`` gives one tile of the whole axis."""
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop + 1, step))
    if size - (starts[-1] + crop) > thresh:
        starts.append(size - crop)
    return starts


def write_tiles(
    raw: np.ndarray, stem: str, out_dir: str, crop: int, step: int, thresh: int, ext: str, prefix: str = ''
) -> list[dict]:
    """Cut ``raw`` into tiles ``<out_dir>/<stem>_s001<ext>, ...`` (row by row) and write them atomically.

    Args:
        raw: ``(H, W, 3)`` float32 linear HDR (written unchanged, e.g. float32 EXR) or uint8/uint16 LDR code values
            (written with the same bit depth; 16-bit data never goes to JPEG: ``.png`` instead).
        stem: name prefix of the tiles. out_dir: their folder. crop, step, thresh: BasicSR's tiling rule
            (:func:`tile_starts`). ext: file extension of the tiles.
        prefix: prepended to the names in the rows (e.g. ``'tiles/'``).

    Returns:
        One row per tile: ``{'tile': name, 'y': y0, 'x': x0, 'h': h, 'w': w}``.
    """
    is_hdr = np.issubdtype(raw.dtype, np.floating)
    h, w = raw.shape[:2]
    rows = []
    index = 0
    for y in tile_starts(h, crop, step, thresh):
        for x in tile_starts(w, crop, step, thresh):
            index += 1
            tile = raw[y : y + crop, x : x + crop]
            if is_hdr:
                name = f'{stem}_s{index:03d}{ext}'
                hdr_io.write_hdr(osp.join(out_dir, name), tile)
            else:
                bits = 16 if tile.dtype == np.uint16 else 8
                out_ext = '.png' if bits == 16 and ext.lower() in ('.jpg', '.jpeg') else ext
                name = f'{stem}_s{index:03d}{out_ext}'
                hdr_io.write_ldr(osp.join(out_dir, name), tile.astype(np.float64) / (2**bits - 1), bit_depth=bits)
            rows.append({'tile': prefix + name, 'y': y, 'x': x, 'h': tile.shape[0], 'w': tile.shape[1]})
    return rows


def hdr_frame_stats(img: np.ndarray, frame: str, percentile: float | None, samples: int) -> FrameStats:
    """Statistics of one whole HDR frame: ``(H, W, 3)`` float32 linear RGB, >= 0, as ``read_hdr`` returns it."""
    return FrameStats(
        frame=frame,
        kind='hdr',
        height=img.shape[0],
        width=img.shape[1],
        digest=image_digest(img),
        norm_scale=hdr_norm_scale(img, percentile),
        peak_sample=peak_rank_sample(img, samples),
    )


def ldr_frame_stats(img: np.ndarray, frame: str, thumbnail_size: int) -> FrameStats:
    """Statistics of one whole LDR frame: ``(H, W, 3)`` float32 display-referred RGB in [0, 1], as ``read_ldr``."""
    return FrameStats(
        frame=frame,
        kind='ldr',
        height=img.shape[0],
        width=img.shape[1],
        digest=image_digest(img),
        thumbnail=global_view_np(img, thumbnail_size),
    )


def source_signature(path: str) -> dict:
    """``{'source', 'source_size', 'source_mtime_ns'}`` of a source frame: a changed file is redone on resume."""
    st = os.stat(path)
    return {'source': osp.abspath(path), 'source_size': int(st.st_size), 'source_mtime_ns': int(st.st_mtime_ns)}


def write_frame_stats(path: str, stats: FrameStats, rows: Sequence[dict], options: dict, signature: dict) -> None:
    """Write ``frames/<frame>.npz`` atomically (module docstring for the keys)."""
    arrays = {
        'kind': np.array(stats.kind),
        'height': np.array(stats.height),
        'width': np.array(stats.width),
        'digest': np.array(stats.digest),
        'options': np.array(json.dumps(options, sort_keys=True)),
        'source': np.array(signature['source']),
        'source_size': np.array(signature['source_size'], dtype=np.int64),
        'source_mtime_ns': np.array(signature['source_mtime_ns'], dtype=np.int64),
        'tile_names': np.array([r['tile'] for r in rows]),
        'tile_boxes': np.array([[r['y'], r['x'], r['y'] + r['h'], r['x'] + r['w']] for r in rows], dtype=np.int64),
    }
    if stats.kind == 'hdr':
        arrays['norm_scale'] = np.array(stats.norm_scale, dtype=np.float64)
        arrays['peak_sample'] = stats.peak_sample
    else:
        arrays['thumbnail'] = stats.thumbnail
    atomic_write(path, lambda f: np.savez(f, **arrays))


def frame_record(path: str) -> dict | None:
    """The bookkeeping of a written ``frames/<frame>.npz`` (kind, options, source signature, tiles), or None when
    the file is missing or unreadable (the frame is then built again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {
                'kind': str(z['kind']),
                'options': json.loads(str(z['options'])),
                'source_size': int(z['source_size']),
                'source_mtime_ns': int(z['source_mtime_ns']),
                'tiles': [(str(n), tuple(int(v) for v in b)) for n, b in zip(z['tile_names'], z['tile_boxes'])],
            }
    except (OSError, ValueError, KeyError):
        return None


def frame_id(path: str) -> str:
    """The id of a source frame in a store: its file name without extension."""
    return osp.splitext(osp.basename(path))[0]


def frame_is_done(store: str, path: str, options: dict) -> bool:
    """True when ``frames/<id>.npz`` exists for this source file (same size and mtime) and these options."""
    record = frame_record(frame_stats_path(store, frame_id(path)))
    if record is None or record['options'] != options:
        return False
    sig = source_signature(path)
    return record['source_size'] == sig['source_size'] and record['source_mtime_ns'] == sig['source_mtime_ns']


def store_frame(task: tuple) -> str:
    """Build one frame of a store (tiles, then its statistics file); returns its kind. ``task`` =
    ``(path, store, options)`` (a tuple, for ``multiprocessing``)."""
    path, store, options = task
    frame = frame_id(path)
    raw = hdr_io.read_image_raw(path)
    if np.issubdtype(raw.dtype, np.floating):
        img = raw = hdr_io.sanitize_hdr(raw, path)  # = read_hdr(path)
        stats = hdr_frame_stats(img, frame, options['hdr_norm'], options['samples'])
        ext = options['hdr_ext']
    else:
        stats = ldr_frame_stats(hdr_io.codes_to_float(raw), frame, options['thumbnail_size'])  # = read_ldr(path)
        ext = options['ldr_ext']
    tiles_dir = osp.join(store, TILES_DIR)
    crop, step, thresh = options['crop_size'], options['step'], options['thresh_size']
    rows = write_tiles(raw, frame, tiles_dir, crop, step, thresh, ext, prefix=f'{TILES_DIR}/')
    write_frame_stats(frame_stats_path(store, frame), stats, rows, options, source_signature(path))
    return stats.kind


def store_options(
    crop_size: int, step: int, thresh_size: int, hdr_norm: float | None, samples: int, thumbnail_size: int,
    hdr_ext: str, ldr_ext: str,
) -> dict:  # fmt: skip
    """The build options recorded in ``store.json`` and every frame file (a frame built otherwise is redone)."""
    if crop_size <= 0 or step <= 0 or thresh_size < 0:
        raise ValueError(f'store: need --crop-size > 0, --step > 0, --thresh-size >= 0; got {crop_size}, {step}, '
                         f'{thresh_size}')  # fmt: skip
    if samples < 2:
        raise ValueError(f'store: --samples must be >= 2, got {samples}')
    if thumbnail_size < 1:
        raise ValueError(f'store: --thumbnail-size must be >= 1, got {thumbnail_size}')
    if hdr_ext.lower() not in hdr_io.HDR_EXTENSIONS:
        raise ValueError(f'store: --hdr-ext must be one of {hdr_io.HDR_EXTENSIONS}, got {hdr_ext!r}')
    if ldr_ext.lower() not in hdr_io.LDR_EXTENSIONS:
        raise ValueError(f'store: --ldr-ext must be one of {hdr_io.LDR_EXTENSIONS}, got {ldr_ext!r}')
    return {
        'crop_size': crop_size, 'step': step, 'thresh_size': thresh_size, 'hdr_norm': hdr_norm, 'samples': samples,
        'thumbnail_size': thumbnail_size, 'hdr_ext': hdr_ext, 'ldr_ext': ldr_ext,
    }  # fmt: skip


def _check_frame_ids(inputs: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for path in inputs:
        frame = frame_id(path)
        if frame in seen:
            raise ValueError(f'store: {seen[frame]} and {path} would both be frame {frame!r}; rename one')
        if '\t' in frame or '\n' in frame:
            raise ValueError(f'store: {path}: tabs and newlines are not allowed in frame names; rename it')
        seen[frame] = path


def build_store(
    inputs: Sequence[str],
    store: str,
    crop_size: int = 512,
    step: int = 256,
    thresh_size: int = 0,
    hdr_norm: float | None = DEFAULT_HDR_NORM,
    samples: int = DEFAULT_RANK_SAMPLES,
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
    hdr_ext: str = '.exr',
    ldr_ext: str = '.png',
    workers: int = 1,
    source: str | None = None,
) -> dict:
    """Build (or resume) a training store from source frames of one kind (all HDR or all LDR).

    Frames already done with the same options and an unchanged source file are skipped; the others are tiled and
    their statistics written (in ``workers`` processes). ``meta_info_store.txt`` and ``store.json`` are then written
    from the frame files, atomically, in frame order.

    Args:
        inputs: source frame files (HDR: ``.exr``/``.hdr``/``.pfm``/float TIFF; LDR: 8/16-bit images).
        store: the store folder (created).
        crop_size, step, thresh_size: BasicSR's tiling rule (:func:`tile_starts`).
        hdr_norm: percentile of the HDR normalisation statistic (the datasets' ``hdr_norm``), None for ``'none'``.
        samples: rows of the exposure statistic (:func:`~llmhdr_basicsr.utils.camera.peak_rank_sample`).
        thumbnail_size: side of the LDR whole-frame view (the datasets' ``global_size``).
        hdr_ext, ldr_ext: tile formats. workers: processes (1 = none). source: the source folder, recorded for the
            rebuild hints of the loader's messages.

    Returns:
        The ``store.json`` dict, plus ``'built'`` and ``'skipped'`` (frame counts of this run).

    Raises:
        ValueError: bad options, clashing frame ids, or HDR and LDR frames mixed.
    """
    options = store_options(crop_size, step, thresh_size, hdr_norm, samples, thumbnail_size, hdr_ext, ldr_ext)
    inputs = sorted(inputs, key=frame_id)
    if not inputs:
        raise ValueError(f'store: no source frames for {store}')
    _check_frame_ids(inputs)
    os.makedirs(osp.join(store, FRAMES_DIR), exist_ok=True)
    os.makedirs(osp.join(store, TILES_DIR), exist_ok=True)
    todo = [p for p in inputs if not frame_is_done(store, p, options)]
    tasks = [(p, store, options) for p in todo]
    if workers > 1 and len(tasks) > 1:
        with Pool(min(workers, len(tasks))) as pool:
            pool.map(store_frame, tasks, chunksize=1)
    else:
        for task in tasks:
            store_frame(task)
    info = write_store_index(inputs, store, options, source)
    return {**info, 'built': len(todo), 'skipped': len(inputs) - len(todo)}


def write_store_index(inputs: Sequence[str], store: str, options: dict, source: str | None) -> dict:
    """Write ``meta_info_store.txt`` and then ``store.json`` (atomically) from the frame files of ``inputs``."""
    lines, kinds = [], {}
    for path in inputs:
        frame = frame_id(path)
        record = frame_record(frame_stats_path(store, frame))
        if record is None:
            raise OSError(f'store: frame statistics of {path} were not written; run the command again')
        kinds.setdefault(record['kind'], path)
        lines += [f'{name}\t{frame}\t{",".join(map(str, box))}' for name, box in record['tiles']]
    if len(kinds) > 1:
        raise ValueError(f'store: {store} would mix HDR frames (e.g. {kinds["hdr"]}) and LDR frames (e.g. '
                         f'{kinds["ldr"]}); give each kind its own --output store')  # fmt: skip
    header = '# llmhdr training store: tile path<TAB>source frame id<TAB>crop box y0,x0,y1,x1 (frame pixels)\n'
    atomic_write_bytes(osp.join(store, STORE_META), (header + ''.join(f'{x}\n' for x in lines)).encode('utf-8'))
    info = {
        'format': STORE_FORMAT,
        'version': STORE_VERSION,
        'kind': next(iter(kinds)),
        'options': options,
        'source': osp.abspath(source) if source else osp.dirname(osp.abspath(inputs[0])),
        'frames': len(inputs),
        'tiles': len(lines),
    }
    atomic_write_bytes(osp.join(store, STORE_INFO), json.dumps(info, indent=1).encode('utf-8'))
    return info


__all__ = [
    'FrameStats',
    'StoreTile',
    'TrainingStore',
    'build_store',
    'check_store_hdr_norm',
    'frame_stats_path',
    'hdr_frame_stats',
    'is_store',
    'ldr_frame_stats',
    'open_store',
    'read_frame_stats',
    'tile_starts',
    'write_tiles',
]
