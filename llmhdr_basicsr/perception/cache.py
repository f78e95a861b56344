"""On-disk cache of VLM perception maps: one ``.npz`` per (image content, prompt/model configuration).

The VLM backend (run as a pre-processing pass rather than at every training step) is queried
once per image by ``llmhdr-perceive``; training reads the maps back with :meth:`PerceptionCache.lookup` and falls back
to the heuristic maps for images that have no entry.

Layout of ``cache_dir``

- ``<key>.npz`` with ``key = f'{content_hash[:16]}_{config_hash[:8]}'``:

  - ``content_hash`` = sha256 of the image **file bytes** (renaming or moving a file keeps its entry; editing it
    invalidates it);
  - ``config_hash`` = sha256 of the JSON list ``[prompt, model, max_side]`` (``prompt`` is the full prompt text,
    system + user, see ``VLMClient.prompt_signature``), so a different prompt, model or image size gets new entries.

  Arrays: ``maps`` float16 ``(3, h, w)`` in [0, 1], order ``[artifact, over, under]``, at a stored resolution
  chosen by the writer (``llmhdr-perceive``: the size of the image sent to the VLM, shrunk to a long side of at most
  ``--store-side`` = 256 px); ``fractions`` float32 ``(3,)`` (mean of each map);
  ``report`` (the validated VLM report as JSON text, '' when none); ``meta`` (JSON text: model, config hash,
  max_side, source file name, source size, creation time, package version).
- ``config_<config_hash[:8]>.json``: the prompt text, model and max_side of that configuration, written on the first
  :meth:`PerceptionCache.put`, so :meth:`PerceptionCache.open` can rebuild the cache object from the folder alone.

Entries are written to a temporary file in the same folder and renamed with ``os.replace``, so an interrupted run
never leaves a half-written entry under its final name. An entry that cannot be read (truncated, not a zip, missing
arrays, wrong shape, non-finite values) counts as missing; it is reported once with a warning and overwritten by the
next :meth:`~PerceptionCache.put`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import os.path as osp
import threading
import time
import zipfile
from dataclasses import dataclass

import cv2
import numpy as np

from llmhdr_basicsr.utils.fileio import atomic_write

from ..version import __version__

logger = logging.getLogger('basicsr.llmhdr')

Source = str | os.PathLike | bytes


@dataclass
class CacheEntry:
    """One decoded cache entry.

    Attributes:
        maps: ``(3, h, w)`` float32 in [0, 1], ``[artifact, over, under]``, at the stored resolution.
        fractions: ``(3,)`` float32, mean of each map.
        report: the VLM report dict (``VLMReport.to_dict()``) or None.
        meta: metadata dict.
    """

    maps: np.ndarray
    fractions: np.ndarray
    report: dict | None
    meta: dict


def config_hash(prompt: str, model: str, max_side: int) -> str:
    """sha256 (hex) of ``[prompt, model, max_side]``: the configuration part of a cache key."""
    blob = json.dumps([str(prompt), str(model), int(max_side)], ensure_ascii=False)
    return hashlib.sha256(blob.encode('utf-8')).hexdigest()


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(3, h, w)`` maps to ``size = (H, W)``: ``INTER_AREA`` when shrinking, bilinear when enlarging.

    Returns:
        ``(3, H, W)`` float32 in [0, 1].
    """
    height, width = int(size[0]), int(size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f'map size must be positive (H, W), got {size}')
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape[1:] == (height, width):
        return maps.copy()
    shrink = height * width < maps.shape[1] * maps.shape[2]
    hwc = cv2.resize(
        np.ascontiguousarray(maps.transpose(1, 2, 0)),
        (width, height),
        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
    )
    return np.clip(hwc.reshape(height, width, 3).transpose(2, 0, 1), 0.0, 1.0).astype(np.float32)


class PerceptionCache:
    """Perception maps per image for one (prompt, model, max_side) configuration.

    Thread-safe (the perceive CLI uses a thread pool). Counters: ``hits``, ``misses``, ``corrupt`` (corrupt entries
    also count as misses), see :meth:`stats`.

    Args:
        cache_dir: folder of the ``.npz`` entries (created when ``create``).
        prompt: full prompt text (system + user; ``VLMClient.prompt_signature(kind)``).
        model: VLM model name.
        max_side: long side limit of the image sent to the VLM.
        create: create ``cache_dir`` if missing; otherwise a missing folder is an error.
    """

    def __init__(self, cache_dir: str, prompt: str, model: str, max_side: int = 768, create: bool = True):
        self.cache_dir = str(cache_dir)
        if create:
            os.makedirs(self.cache_dir, exist_ok=True)
        elif not osp.isdir(self.cache_dir):
            raise FileNotFoundError(f'Perception cache folder does not exist: {self.cache_dir}')
        self.prompt, self.model, self.max_side = str(prompt), str(model), int(max_side)
        self.config_hash = config_hash(self.prompt, self.model, self.max_side)
        self.hits = self.misses = self.corrupt = 0
        self._lock = threading.Lock()
        self._hash_memo: dict[tuple, str] = {}
        self._reported_corrupt: set[str] = set()
        self._warned_miss = False
        self._config_written = False

    # -- construction helpers ------------------------------------------------------------------------------------------

    @classmethod
    def from_client(cls, cache_dir: str, client, kind: str = 'guidance', create: bool = True) -> PerceptionCache:
        """The cache matching a ``VLMClient`` and prompt kind (same prompt text, model and max_side)."""
        return cls(cache_dir, client.prompt_signature(kind), client.model, client.max_side, create=create)

    @staticmethod
    def configs(cache_dir: str) -> list[dict]:
        """The configurations recorded in ``cache_dir`` (``config_*.json``), each ``{prompt, model, max_side, ...}``."""
        out = []
        for path in sorted(glob.glob(osp.join(str(cache_dir), 'config_*.json'))):
            try:
                with open(path, encoding='utf-8') as f:
                    cfg = json.load(f)
                missing = [k for k in ('prompt', 'model', 'max_side') if k not in cfg]
                if missing:
                    raise KeyError(f'missing {missing}')
                cfg['config_hash'] = config_hash(cfg['prompt'], cfg['model'], cfg['max_side'])  # authoritative
            except (OSError, ValueError, KeyError, TypeError) as e:
                logger.warning(f'Perception cache: ignoring unreadable configuration file {path}: {e}')
                continue
            cfg['file'] = path
            out.append(cfg)
        return out

    @classmethod
    def open(cls, cache_dir: str, model: str | None = None, config: str | None = None) -> PerceptionCache:
        """Open an existing cache folder written by ``llmhdr-perceive`` without repeating its prompt.

        Args:
            cache_dir: the folder given to ``llmhdr-perceive --cache``.
            model: choose the configuration of this model when the folder holds several.
            config: choose the configuration whose hash starts with this (``llmhdr-perceive`` prints it as
                ``config <8 hex digits>``), e.g. to tell the guidance and the loss prompt apart.

        Raises:
            FileNotFoundError: no folder or no configuration in it. ValueError: several configurations match.
        """
        if not osp.isdir(str(cache_dir)):
            raise FileNotFoundError(f'Perception cache folder does not exist: {cache_dir}')
        cfgs = [
            c
            for c in cls.configs(cache_dir)
            if (model is None or c['model'] == model)
            and (config is None or c.get('config_hash', '').startswith(config))
        ]
        if not cfgs:
            extra = (f' for model {model!r}' if model else '') + (f' with config {config!r}' if config else '')
            raise FileNotFoundError(f'No perception cache configuration{extra} in {cache_dir} (run llmhdr-perceive)')
        if len(cfgs) > 1:
            names = ', '.join(f'{c["config_hash"][:8]} (model {c["model"]!r}, max_side {c["max_side"]})' for c in cfgs)
            raise ValueError(
                f'{cache_dir} holds several perception configurations: {names}; pass model= or config=, or build '
                'PerceptionCache(cache_dir, prompt, model, max_side) explicitly'
            )
        c = cfgs[0]
        return cls(cache_dir, c['prompt'], c['model'], c['max_side'], create=False)

    # -- keys ----------------------------------------------------------------------------------------------------------

    def content_hash(self, source: Source) -> str:
        """sha256 (hex) of the image file bytes (``source`` = path or the bytes themselves).

        Paths are memoised by (absolute path, mtime, size), so repeated look-ups at training time read nothing.
        """
        if isinstance(source, (bytes, bytearray, memoryview)):
            return hashlib.sha256(source).hexdigest()
        path = osp.abspath(os.fspath(source))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(f'Image file not found: {path}') from None
        memo_key = (path, st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._hash_memo.get(memo_key)
        if cached is not None:
            return cached
        h = hashlib.sha256()
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 20), b''):
                h.update(chunk)
        digest = h.hexdigest()
        with self._lock:
            self._hash_memo[memo_key] = digest
        return digest

    def key(self, source: Source) -> str:
        """``f'{content_hash[:16]}_{config_hash[:8]}'``."""
        return f'{self.content_hash(source)[:16]}_{self.config_hash[:8]}'

    def entry_path(self, source: Source) -> str:
        """``<cache_dir>/<key>.npz``."""
        return osp.join(self.cache_dir, self.key(source) + '.npz')

    # -- reading -------------------------------------------------------------------------------------------------------

    def _read(self, path: str) -> CacheEntry | None:
        """Decode one entry; None when absent; None + one warning + counter when corrupt."""
        if not osp.isfile(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                maps = np.asarray(z['maps'], dtype=np.float32)
                fractions = np.asarray(z['fractions'], dtype=np.float32)
                report_text = str(z['report'].item())
                meta = json.loads(str(z['meta'].item()))
            report = json.loads(report_text) if report_text else None
            if maps.ndim != 3 or maps.shape[0] != 3 or min(maps.shape[1:]) < 1 or fractions.shape != (3,):
                raise ValueError(f'bad array shapes maps {maps.shape}, fractions {fractions.shape}')
            if not np.isfinite(maps).all() or maps.min() < 0 or maps.max() > 1:
                raise ValueError('maps are not finite values in [0, 1]')
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            with self._lock:
                self.corrupt += 1
                first = path not in self._reported_corrupt
                self._reported_corrupt.add(path)
            if first:
                logger.warning(f'Perception cache: corrupt entry {path} treated as missing ({type(e).__name__}: {e})')
            return None
        return CacheEntry(maps, fractions, report, meta)

    def get_entry(self, source: Source) -> CacheEntry | None:
        """The whole entry of an image, or None (missing or corrupt). Counts a hit or a miss."""
        entry = self._read(self.entry_path(source))
        with self._lock:
            if entry is None:
                self.misses += 1
            else:
                self.hits += 1
        return entry

    def get(self, source: Source, size: tuple[int, int] | None = None) -> np.ndarray | None:
        """Maps of an image, or None (missing or corrupt). Counts a hit or a miss.

        Args:
            source: image file path, or the file's bytes.
            size: ``(H, W)`` to resize to; None keeps the stored resolution.

        Returns:
            ``(3, H, W)`` float32 in [0, 1], ``[artifact, over, under]``; or None.
        """
        entry = self.get_entry(source)
        if entry is None:
            return None
        return entry.maps if size is None else resize_maps(entry.maps, size)

    def contains(self, source: Source) -> bool:
        """True when a readable entry exists (a corrupt one counts as absent). Does not touch the hit/miss counters."""
        return self._read(self.entry_path(source)) is not None

    def lookup(self, path: str, size: tuple[int, int]) -> np.ndarray | None:
        """Training-time look-up: maps of ``path`` resized to ``size``, or None when the caller must fall back.

        The first miss logs one warning (the caller uses the heuristic maps instead); later misses are only counted
        (:meth:`stats`, :meth:`summary`).

        Args:
            path: image file path (the same file that ``llmhdr-perceive`` read).
            size: ``(H, W)`` of the image the maps are used with.

        Returns:
            ``(3, H, W)`` float32 in [0, 1] (``[artifact, over, under]``), or None.
        """
        maps = self.get(path, size)
        if maps is None:
            with self._lock:
                first = not self._warned_miss
                self._warned_miss = True
            if first:
                logger.warning(
                    f'Perception cache {self.cache_dir} (model {self.model!r}) has no entry for {path}: using the '
                    'heuristic maps for it. Further misses are counted (see PerceptionCache.summary()); run '
                    'llmhdr-perceive on the training folders to fill the cache.'
                )
        return maps

    # -- writing -------------------------------------------------------------------------------------------------------

    def put(self, source: Source, maps: np.ndarray, report: dict | None = None, meta: dict | None = None) -> str:
        """Store the maps (and report) of one image atomically; returns the entry path.

        Args:
            source: image file path, or the file's bytes.
            maps: ``(3, h, w)`` float in [0, 1] (clipped), ``[artifact, over, under]``; stored as float16.
            report: the VLM report dict (``VLMReport.to_dict()``), optional.
            meta: extra metadata (JSON-serialisable), merged into the stored metadata.
        """
        maps = np.asarray(maps, dtype=np.float32)
        if maps.ndim != 3 or maps.shape[0] != 3 or min(maps.shape[1:]) < 1:
            raise ValueError(f'Perception maps must have shape (3, H, W), got {maps.shape}')
        if not np.isfinite(maps).all():
            raise ValueError('Perception maps contain NaN or infinite values')
        maps = np.clip(maps, 0.0, 1.0)
        content = self.content_hash(source)
        info = {
            'model': self.model,
            'config_hash': self.config_hash,
            'max_side': self.max_side,
            'content_hash': content,
            'source': None if isinstance(source, (bytes, bytearray, memoryview)) else osp.basename(os.fspath(source)),
            'stored_size': list(maps.shape[1:]),
            'created': time.strftime('%Y-%m-%dT%H:%M:%S'),
            'version': __version__,
        }
        info.update(meta or {})
        path = osp.join(self.cache_dir, f'{content[:16]}_{self.config_hash[:8]}.npz')
        arrays = {
            'maps': maps.astype(np.float16),
            'fractions': maps.reshape(3, -1).astype(np.float64).mean(axis=1).astype(np.float32),
            'report': np.array(json.dumps(report) if report is not None else ''),
            'meta': np.array(json.dumps(info)),
        }
        self._atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
        with self._lock:
            self._reported_corrupt.discard(path)
            write_config = not self._config_written
            self._config_written = True
        if write_config:
            self._write_config()
        return path

    @staticmethod
    def _atomic_write(path: str, write) -> None:
        atomic_write(path, write, fsync=True)

    def _write_config(self) -> None:
        path = osp.join(self.cache_dir, f'config_{self.config_hash[:8]}.json')
        if osp.isfile(path):
            return
        cfg = {'prompt': self.prompt, 'model': self.model, 'max_side': self.max_side, 'config_hash': self.config_hash}
        text = json.dumps(cfg, indent=2, ensure_ascii=False).encode('utf-8')
        self._atomic_write(path, lambda f: f.write(text))

    # -- counters ------------------------------------------------------------------------------------------------------

    def stats(self) -> dict:
        """``{'hits', 'misses', 'corrupt', 'lookups'}`` since construction or :meth:`reset_stats`."""
        with self._lock:
            return {'hits': self.hits, 'misses': self.misses, 'corrupt': self.corrupt,
                    'lookups': self.hits + self.misses}  # fmt: skip

    def reset_stats(self) -> None:
        """Zero the counters (e.g. per logging interval); the miss warning is not repeated."""
        with self._lock:
            self.hits = self.misses = self.corrupt = 0

    def summary(self) -> str:
        """One log line, e.g. ``perception cache: 95 hits, 5 misses (heuristic fallback), 0 corrupt``."""
        s = self.stats()
        return f'perception cache: {s["hits"]} hits, {s["misses"]} misses (heuristic fallback), {s["corrupt"]} corrupt'

    def __len__(self) -> int:
        """Number of entry files of this configuration in the folder."""
        return len(glob.glob(osp.join(self.cache_dir, f'*_{self.config_hash[:8]}.npz')))

    def __repr__(self) -> str:
        return (f'PerceptionCache({self.cache_dir!r}, model={self.model!r}, max_side={self.max_side}, '
                f'config={self.config_hash[:8]})')  # fmt: skip
