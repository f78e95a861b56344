"""Shared plumbing of the HDR datasets: option checks, file lists, per-sample randomness, robust cached reading.

Conventions every dataset of :mod:`llmhdr_basicsr.data` follows (implemented once here in :class:`HDRDatasetBase`):

- **Options.** The constructor takes BasicSR's whole dataset-option dict. Keys that neither BasicSR's bookkeeping
  (:data:`BASICSR_KEYS`) nor the dataset uses are reported in one warning (a typo such as ``crop_szie`` would
  otherwise be ignored silently). ``io_backend`` must be ``{'type': 'disk'}`` (or absent); lmdb/memcached are not
  supported. ``phase`` is ``'train'``, ``'val'`` or ``'test'``; BasicSR always fills it in, a dict built by hand
  without it counts as ``'test'`` (no randomness).
- **Folders.** ``dataroot_*`` folders (``~`` expanded) or ``meta_info_*`` text files listing paths relative to the
  folder. A missing folder/file raises ``FileNotFoundError``, an empty folder ``ValueError``, both naming the path.
- **Bad files.** In the train phase a file that cannot be read (missing, corrupt, wrong kind, non-finite after
  sanitising) is **skipped**: a warning names the file and the reason, the file is remembered as bad in this process
  (``num_skipped`` counts them), and another sample is drawn at random. After
  :data:`MAX_CONSECUTIVE_READ_FAILURES` consecutive failures, or when no readable file is left, a ``RuntimeError``
  lists the files. In the val/test phases the error is raised at once (it names the file). NaN/Inf/negative HDR
  values are not read errors: :mod:`llmhdr_basicsr.utils.hdr_io` replaces them and warns.
- **Cache.** ``cache_images: true`` reads (and, for HDR, normalises) every image once at construction and keeps the
  float32 arrays in memory. BasicSR builds the dataset in the main process before the DataLoader forks its workers,
  so on Linux (fork) the workers share that memory copy-on-write and nothing is read again in any epoch. Memory:
  ``12 * H * W`` bytes per image (6 MB for 1024x512); with the ``spawn`` start method (macOS, Windows) every worker
  receives its own pickled copy each epoch.
- **Randomness** (:func:`sample_rng`): each ``__getitem__`` builds its own ``numpy.random.Generator`` from one draw
  of the global ``np.random`` state and, inside a DataLoader worker, the worker's torch seed. See there for why.
"""

from __future__ import annotations

import hashlib
import logging
import os.path as osp
import re

import cv2
import numpy as np
from torch.utils import data

from llmhdr_basicsr.utils import hdr_io

from .hdr_transforms import normalize_hdr_np, scale_hdr

logger = logging.getLogger('basicsr.llmhdr')

#: Dataset-option keys that BasicSR itself adds or reads (``basicsr.utils.options.parse_options``,
#: ``basicsr.data.build_dataloader``, ``basicsr.train``); never reported as unknown.
BASICSR_KEYS = frozenset(
    {
        'name', 'type', 'phase', 'scale', 'io_backend', 'batch_size_per_gpu', 'num_worker_per_gpu',
        'dataset_enlarge_ratio', 'prefetch_mode', 'num_prefetch_queue', 'pin_memory', 'persistent_workers',
        'use_shuffle',
    }
)  # fmt: skip
PHASES = ('train', 'val', 'test')
MAX_CONSECUTIVE_READ_FAILURES = 10
#: Errors that mean "this file cannot be used" (hdr_io raises FileNotFoundError / ImageReadError, both OSError).
READ_ERRORS = (OSError, ValueError, cv2.error)
HDR_FOLDER_EXTENSIONS = hdr_io.HDR_EXTENSIONS + hdr_io.FLOAT_CAPABLE_EXTENSIONS
LDR_FOLDER_EXTENSIONS = hdr_io.LDR_EXTENSIONS
# BasicSR's meta_info format "0001.png (480,480,3)": the size annotation is dropped.
_META_SIZE_SUFFIX = re.compile(r'\s+\(\s*\d+\s*,\s*\d+\s*(,\s*\d+\s*)?\)\s*$')


def sample_rng() -> np.random.Generator:
    """A fresh random generator for one dataset sample.

    Seeded from one 31-bit draw of the global ``np.random`` state, plus, inside a DataLoader worker, the worker's
    torch seed (``get_worker_info().seed``). Why both:

    - ``np.random`` is what BasicSR seeds: ``set_random_seed(manual_seed)`` in the main process and
      ``worker_init_fn`` (``np.random.seed(num_workers * rank + worker_id + seed)``) in each worker. Re-seeding
      ``np.random`` therefore reproduces the samples exactly, in the main process and in workers.
    - BasicSR's ``worker_init_fn`` gives a worker the **same** seed in every epoch (workers are re-created per epoch
      unless ``persistent_workers``), so a pure ``np.random`` stream would repeat per worker each epoch: the same
      HDR partners and crop windows, only in a different LDR order. The torch worker seed is ``base_seed +
      worker_id`` with ``base_seed`` drawn anew from the (``manual_seed``-seeded) torch RNG for every epoch, so mixing
      it in makes epochs differ while staying reproducible.

    Returns:
        A ``numpy.random.Generator`` (PCG64).
    """
    entropy = [int(np.random.randint(0, 2**31 - 1))]
    info = data.get_worker_info()
    if info is not None:
        entropy.append(int(info.seed) & 0xFFFFFFFFFFFFFFFF)
    return np.random.default_rng(entropy)


def ensure_finite(arr: np.ndarray, path: str) -> np.ndarray:
    """Raise ``ValueError`` naming ``path`` if ``arr`` holds NaN or Inf (never hand a silent NaN to the model)."""
    if not np.isfinite(arr).all():
        raise ValueError(f'{path}: non-finite values after reading/normalisation')
    return arr


def image_digest(img: np.ndarray) -> str:
    """Hex digest (blake2b, 80 bits) of a decoded image's shape, dtype and exact values: the same image read from any
    file or path gives the same key, any change of a pixel gives another one."""
    img = np.ascontiguousarray(img)
    h = hashlib.blake2b(f'{img.shape}|{img.dtype}|'.encode(), digest_size=10)
    h.update(memoryview(img).cast('B'))
    return h.hexdigest()


def global_view_np(img: np.ndarray, size: int) -> np.ndarray:
    """The whole-image LDR view: ``(H, W, 3)`` float display-referred RGB in [0, 1] -> ``(size, size, 3)`` uint8.

    Area-averaged resize (``cv2.INTER_AREA``; bilinear when enlarging) to a square, aspect ratio not kept (the CLIP and
    SAM inputs are square and squashed the same way); quantised to 8 bits, which ``hist_equalize`` (the only consumer,
    the contrastive and semantic losses) does anyway, so the memo of the dataset holds 3 bytes per pixel.
    """
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if size <= min(h, w) else cv2.INTER_LINEAR
    small = cv2.resize(np.ascontiguousarray(img, dtype=np.float32), (size, size), interpolation=interp)
    return np.round(np.clip(small, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(size, size, -1)


def read_meta_info(meta_file: str, root: str, option: str) -> list[str]:
    """Read a meta_info list: one image path per line, relative to ``root`` (absolute paths are kept).

    Blank lines and lines starting with ``#`` are ignored; BasicSR's ``name.png (h,w,c)`` size annotation is
    accepted and dropped.

    Args:
        meta_file: the text file.
        root: folder the listed paths are relative to.
        option: option name for messages.

    Returns:
        The listed paths joined to ``root``, in file order.

    Raises:
        FileNotFoundError: the meta file or any listed image is missing (up to 5 are named). ValueError: no entries.
    """
    meta_file = osp.expanduser(str(meta_file))
    if not osp.isfile(meta_file):
        raise FileNotFoundError(f'{option}: meta_info file not found: {meta_file}')
    paths = []
    with open(meta_file, encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            paths.append(osp.join(root, _META_SIZE_SUFFIX.sub('', line)))
    if not paths:
        raise ValueError(f'{option}: meta_info file {meta_file} lists no images')
    missing = [p for p in paths if not osp.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f'{option}: {len(missing)} of {len(paths)} files listed in {meta_file} do not exist under {root}, '
            f'e.g. {missing[:5]}'
        )
    return paths


def list_domain_images(folder: str, extensions: tuple, option: str, what: str) -> list[str]:
    """Sorted image files of one domain directly inside ``folder``.

    Args:
        folder: the folder (``~`` already expanded).
        extensions: accepted file extensions (lower case, with dot).
        option: option name for messages (e.g. ``'dataroot_hdr'``).
        what: ``'LDR'`` or ``'HDR'``, for messages.

    Raises:
        FileNotFoundError: no such folder. ValueError: no file with one of ``extensions`` (other image files found
        there are named, e.g. PNGs in an HDR folder).
    """
    if not osp.isdir(folder):
        raise FileNotFoundError(f'{option}: {what} folder does not exist: {folder}')
    paths = hdr_io.list_images(folder, extensions)
    if not paths:
        others = [osp.basename(p) for p in hdr_io.list_images(folder, hdr_io.IMAGE_EXTENSIONS)]
        hint = f'; it holds {len(others)} other image file(s), e.g. {others[:3]}' if others else ''
        raise ValueError(f'{option}: no {what} images ({", ".join(extensions)}) in {folder}{hint}')
    return paths


def relative_stem(path: str, root: str) -> str:
    """Path relative to ``root`` without extension (``sub/a.png`` -> ``sub/a``), the key of per-image side files."""
    return osp.splitext(osp.relpath(path, root))[0]


class HDRDatasetBase(data.Dataset):
    """Base class of the LDR/HDR datasets: option checks, file lists, robust and optionally cached reading.

    Subclasses set :attr:`OPTION_KEYS` (their own option names) and call the helpers; see the module docstring for
    the shared conventions. Attributes available to subclasses: ``opt``, ``name``, ``phase``, ``is_train``,
    ``num_skipped``.
    """

    OPTION_KEYS: frozenset = frozenset()

    def __init__(self, opt: dict) -> None:
        super().__init__()
        self.opt = opt
        self.name = str(opt.get('name', type(self).__name__))
        self.phase = opt.get('phase', 'test')
        if self.phase not in PHASES:
            raise ValueError(f'{self.name}: phase must be one of {PHASES}, got {self.phase!r}')
        self.is_train = self.phase == 'train'
        self._check_options()
        self._cache: dict = {}
        self._bad: dict[str, dict[int, str]] = {}  # kind -> {index: error message}
        self.num_skipped = 0

    # ------------------------------------------------------------------------------------------------ options
    def _check_options(self) -> None:
        unknown = sorted(set(self.opt) - BASICSR_KEYS - self.OPTION_KEYS)
        if unknown:
            logger.warning(
                f'{type(self).__name__} {self.name}: ignoring unknown option(s) {unknown}; '
                f'known: {sorted(self.OPTION_KEYS)}'
            )
        backend = self.opt.get('io_backend') or {'type': 'disk'}
        if not isinstance(backend, dict) or backend.get('type') != 'disk':
            raise ValueError(f'{self.name}: io_backend must be {{type: disk}} (lmdb/memcached are not supported), got '
                             f'{backend!r}')  # fmt: skip

    def _bool_opt(self, key: str, default: bool) -> bool:
        value = self.opt.get(key, default)
        if not isinstance(value, bool):
            raise ValueError(f'{self.name}: option {key} must be true or false, got {value!r}')
        return value

    def _crop_opt(self, default: int | None) -> int | None:
        value = self.opt.get('crop_size', default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f'{self.name}: option crop_size must be a positive integer or null, got {value!r}')
        return value

    def _folder_opt(self, *keys: str) -> tuple[str, str]:
        """The first of ``keys`` that is set: ``(option_name, expanded_path)``; ValueError if none is."""
        for key in keys:
            if self.opt.get(key) is not None:
                return key, osp.expanduser(str(self.opt[key]))
        raise ValueError(f'{self.name}: option {" or ".join(keys)} (an image folder) is required')

    def _image_list(self, root_key: str, root: str, meta_key: str | None, extensions: tuple, what: str) -> list[str]:
        meta = self.opt.get(meta_key) if meta_key else None
        if meta is not None:
            return read_meta_info(meta, root, meta_key)
        return list_domain_images(root, extensions, root_key, what)

    # ------------------------------------------------------------------------------------------------ reading
    def read_ldr(self, path: str) -> np.ndarray:
        """``(H, W, 3)`` float32 display-referred RGB in [0, 1] (from the cache when ``cache_images``)."""
        cached = self._cache.get(('ldr', path))
        if cached is not None:
            return cached
        return hdr_io.read_ldr(path)  # integer data: always finite

    def read_hdr(self, path: str, percentile: float | None, scale: float | None = None) -> tuple[np.ndarray, float]:
        """Read and normalise one HDR file (see :func:`normalize_hdr_np`); cached when ``cache_images``.

        Args:
            path: the file. percentile: the ``hdr_norm`` percentile, computed on this file's pixels.
            scale: a known divisor instead (a training-store tile: its whole frame's ``hdr_norm_scale``).

        Returns:
            ``((H, W, 3)`` float32 linear RGB >= 0 divided by ``scale``, ``scale``).
        """
        cached = self._cache.get(('hdr', path))
        if cached is not None:
            return cached
        img = hdr_io.read_hdr(path)
        img, scale = normalize_hdr_np(img, percentile) if scale is None else scale_hdr(img, scale)
        return ensure_finite(img, path), scale

    def preload(self, kind: str, paths: list[str], read) -> None:
        """Fill the in-memory cache (``cache_images``): ``read(path)`` for every path, stored under ``(kind, path)``.

        Unreadable files are skipped with a warning in the train phase (and remembered as bad), raised otherwise.
        """
        nbytes = 0
        for index, path in enumerate(paths):
            try:
                value = read(path)
            except READ_ERRORS as err:
                if not self.is_train:
                    raise
                self._mark_bad(kind, index, err)
                continue
            self._cache[(kind, path)] = value
            nbytes += (value[0] if isinstance(value, tuple) else value).nbytes
        logger.info(f'{self.name}: cached {len(paths)} {kind} images in memory ({nbytes / 2**20:.0f} MiB)')

    def _mark_bad(self, kind: str, index: int, err: BaseException) -> None:
        self._bad.setdefault(kind, {})[index] = str(err)
        self.num_skipped += 1
        logger.warning(f'{self.name}: skipping unreadable {kind} sample: {err} ({self.num_skipped} skipped so far in '
                       f'this process)')  # fmt: skip

    def load_robust(self, kind: str, index: int, count: int, load, rng: np.random.Generator):
        """Call ``load(index)``; in the train phase skip unreadable samples by drawing other indices at random.

        Args:
            kind: name of the index space (``'ldr'``, ``'hdr'``, ``'pair'``), for the bad-file memory and messages.
            index: the first index to try.
            count: number of indices (replacement draws are uniform over the ones not known to be bad).
            load: ``index -> value``; raises one of :data:`READ_ERRORS` for an unusable file.
            rng: source of the replacement draws.

        Returns:
            ``(index_used, value)``.

        Raises:
            The read error itself outside the train phase; ``RuntimeError`` after
            :data:`MAX_CONSECUTIVE_READ_FAILURES` consecutive failures or when every file is known to be bad.
        """
        if not self.is_train:
            return index, load(index)
        bad = self._bad.setdefault(kind, {})
        errors = []
        while True:
            if index not in bad:
                try:
                    return index, load(index)
                except READ_ERRORS as err:
                    self._mark_bad(kind, index, err)
                    errors.append(str(err))
                    if len(errors) >= MAX_CONSECUTIVE_READ_FAILURES:
                        raise RuntimeError(
                            f'{self.name}: {len(errors)} consecutive {kind} samples could not be read:\n  '
                            + '\n  '.join(errors)
                        ) from err
            good = [i for i in range(count) if i not in bad]  # only reached after a failure: O(count) is fine
            if not good:
                raise RuntimeError(f'{self.name}: none of the {count} {kind} samples can be read:\n  '
                                   + '\n  '.join(list(bad.values())[:10]))  # fmt: skip
            index = good[int(rng.integers(len(good)))]
