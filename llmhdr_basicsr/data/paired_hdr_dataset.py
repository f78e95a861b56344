"""PairedLDRHDRDataset: LDR inputs with their HDR ground truth, matched by file name, for validation and testing."""

from __future__ import annotations

import os.path as osp

import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY

from .dataset_util import HDR_FOLDER_EXTENSIONS, LDR_FOLDER_EXTENSIONS, HDRDatasetBase, sample_rng
from .hdr_transforms import DEFAULT_HDR_NORM, img2tensor, parse_hdr_norm, random_crop, random_flip_rot
from .training_store import check_store_hdr_norm, open_store


def match_by_stem(lq_paths: list[str], gt_paths: list[str], name: str) -> list[tuple[str, str]]:
    """Pair LDR and HDR files whose names without extension are equal (``a.png`` <-> ``a.exr``).

    Args:
        lq_paths: LDR files.
        gt_paths: HDR files.
        name: dataset name for messages.

    Returns:
        ``[(lq_path, gt_path), ...]`` sorted by stem.

    Raises:
        ValueError: a stem occurs twice in one folder, or a file has no partner (up to 5 per side are named).
    """

    def by_stem(paths: list[str], side: str) -> dict[str, str]:
        table: dict[str, str] = {}
        for path in paths:
            stem = osp.splitext(osp.basename(path))[0]
            if stem in table:
                raise ValueError(f'{name}: two {side} files share the name {stem!r}: {table[stem]} and {path}')
            table[stem] = path
        return table

    lq, gt = by_stem(lq_paths, 'LDR (dataroot_lq)'), by_stem(gt_paths, 'HDR (dataroot_gt)')
    only_lq, only_gt = sorted(set(lq) - set(gt)), sorted(set(gt) - set(lq))
    if only_lq or only_gt:
        raise ValueError(
            f'{name}: LDR and HDR files are matched by name without extension, but {len(only_lq)} LDR file(s) have '
            f'no HDR partner (e.g. {[osp.basename(lq[s]) for s in only_lq[:5]]}) and {len(only_gt)} HDR file(s) '
            f'have no LDR partner (e.g. {[osp.basename(gt[s]) for s in only_gt[:5]]})'
        )
    return [(lq[s], gt[s]) for s in sorted(lq)]


@DATASET_REGISTRY.register()
class PairedLDRHDRDataset(HDRDatasetBase):
    """LDR images and their HDR ground truth (evaluation, and supervised training with ``PairedHDRModel``).

    Files are paired by **name without extension** (``0001.png`` with ``0001.hdr``), not by sorted order; a file
    without a partner is an error naming it.

    Options (besides BasicSR's ``name``, ``type``, ``phase``, ``io_backend: {type: disk}``, loader keys):

    - ``dataroot_lq`` (required): LDR folder (8/16-bit PNG/TIFF/JPEG/BMP/WebP).
    - ``dataroot_gt`` (required): HDR folder (``.hdr``/``.exr``/``.pfm``/float TIFF).
    - Either may instead be a training store (``scripts/prepare_data.py store``,
      :mod:`llmhdr_basicsr.data.training_store`): its tiles are the files (an LDR and an HDR store built with the same
      tiling from frames of the same names pair tile by tile); a ground-truth tile is normalised with its whole
      frame's ``hdr_norm`` scale, as the frame itself would be (the store's percentile must equal ``hdr_norm``).
    - ``hdr_norm`` (default 99.5, as :class:`UnpairedLDRHDRDataset`): per-image normalisation of the ground truth
      (a luminance percentile mapped to 1, ``'max'`` or ``'none'``; values above 1 kept). The same default as for
      training, so that validation targets live in the space the model was trained on; the HDR metrics align scales
      anyway, and ``gt * gt_scale`` recovers the file's values.
    - ``crop_size`` (default 256), ``use_hflip`` (default true), ``use_rot`` (default false): train phase only, the
      same window and flips for LDR and HDR (images smaller than the crop are reflect-padded). Val/test: full images.
    - ``cache_images`` (default false): keep decoded images in memory (:mod:`llmhdr_basicsr.data.dataset_util`).

    An LDR image and its ground truth must have the same height and width (else an error naming both files; in
    the train phase the pair is skipped with a warning).

    Returns (``__getitem__``): ``{'lq': (3, H, W) float32 display-referred RGB in [0, 1], 'gt': (3, H, W) float32
    linear RGB >= 0 (normalised), 'gt_scale': float32 scalar tensor, 'lq_path': str, 'gt_path': str}``.
    """

    OPTION_KEYS = frozenset(
        {'dataroot_lq', 'dataroot_gt', 'hdr_norm', 'crop_size', 'use_hflip', 'use_rot', 'cache_images'}
    )

    def __init__(self, opt: dict) -> None:
        super().__init__(opt)
        lq_key, self.lq_root = self._folder_opt('dataroot_lq')
        gt_key, self.gt_root = self._folder_opt('dataroot_gt')
        lq_store = open_store(self.lq_root, lq_key, 'ldr', None, opt, self.name)
        self.gt_store = open_store(self.gt_root, gt_key, 'hdr', None, opt, self.name)
        if lq_store is not None:
            lq_paths = lq_store.paths
        else:
            lq_paths = self._image_list(lq_key, self.lq_root, None, LDR_FOLDER_EXTENSIONS, 'LDR')
        if self.gt_store is not None:
            gt_paths = self.gt_store.paths
        else:
            gt_paths = self._image_list(gt_key, self.gt_root, None, HDR_FOLDER_EXTENSIONS, 'HDR')
        self.pairs = match_by_stem(lq_paths, gt_paths, self.name)
        self.crop_size = self._crop_opt(256)
        self.use_hflip = self._bool_opt('use_hflip', True)
        self.use_rot = self._bool_opt('use_rot', False)
        self.hdr_percentile = parse_hdr_norm(opt.get('hdr_norm', DEFAULT_HDR_NORM))
        check_store_hdr_norm(self.gt_store, self.hdr_percentile, 'dataroot_gt', self.name)
        if self._bool_opt('cache_images', False):
            self.preload('ldr', [lq for lq, _ in self.pairs], self.read_ldr)
            self.preload('hdr', [gt for _, gt in self.pairs], self.read_gt)

    def __len__(self) -> int:
        return len(self.pairs)

    def read_gt(self, path: str) -> tuple[np.ndarray, float]:
        """One normalised ground truth (:meth:`read_hdr`); a store tile is divided by its whole frame's scale."""
        if self.gt_store is None or self.hdr_percentile is None:
            return self.read_hdr(path, self.hdr_percentile)
        return self.read_hdr(path, self.hdr_percentile, scale=self.gt_store.frame_stats(path).norm_scale)

    def read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray, float]:
        """``(lq (H, W, 3) display-referred [0, 1], gt (H, W, 3) linear normalised, gt_scale)`` of pair ``index``."""
        lq_path, gt_path = self.pairs[index]
        lq = self.read_ldr(lq_path)
        gt, scale = self.read_gt(gt_path)
        if lq.shape != gt.shape:
            raise ValueError(f'{self.name}: paired images differ in size: {lq_path} is {lq.shape[1]}x{lq.shape[0]}, '
                             f'{gt_path} is {gt.shape[1]}x{gt.shape[0]}')  # fmt: skip
        return lq, gt, scale

    def __getitem__(self, index: int) -> dict:
        rng = sample_rng() if self.is_train else None
        index, (lq, gt, scale) = self.load_robust('pair', index % len(self.pairs), len(self.pairs), self.read_pair, rng)
        if self.is_train:
            if self.crop_size is not None:
                (lq, gt), _ = random_crop([lq, gt], self.crop_size, rng)
            lq, gt = random_flip_rot([lq, gt], rng, self.use_hflip, self.use_rot)
        lq_path, gt_path = self.pairs[index]
        return {
            'lq': img2tensor(lq),
            'gt': img2tensor(gt),
            'gt_scale': torch.tensor(scale, dtype=torch.float32),
            'lq_path': lq_path,
            'gt_path': gt_path,
        }
