"""SingleLDRDataset / SingleHDRDataset: images of one domain without ground truth, for inference and test.py."""

from __future__ import annotations

import logging

import torch
from basicsr.utils.registry import DATASET_REGISTRY

from .dataset_util import HDR_FOLDER_EXTENSIONS, LDR_FOLDER_EXTENSIONS, HDRDatasetBase, sample_rng
from .hdr_transforms import DEFAULT_HDR_NORM, img2tensor, parse_hdr_norm

logger = logging.getLogger('basicsr.llmhdr')


@DATASET_REGISTRY.register()
class SingleLDRDataset(HDRDatasetBase):
    """LDR images to reconstruct (LDR->HDR inference without ground truth), full resolution, no augmentation.

    Options (besides BasicSR's ``name``, ``type``, ``phase``, ``io_backend: {type: disk}``, loader keys):

    - ``dataroot_lq`` (required): folder of 8/16-bit PNG/TIFF/JPEG/BMP/WebP images.
    - ``meta_info_file`` (optional): text file of image paths relative to ``dataroot_lq``, one per line.
    - ``cache_images`` (default false): keep decoded images in memory.

    Returns (``__getitem__``): ``{'lq': (3, H, W) float32 RGB, display-referred (sRGB-encoded), in [0, 1],
    'lq_path': str}``. Unreadable files raise (naming the file) outside the train phase.
    """

    OPTION_KEYS = frozenset({'dataroot_lq', 'meta_info_file', 'cache_images'})

    def __init__(self, opt: dict) -> None:
        super().__init__(opt)
        key, self.lq_root = self._folder_opt('dataroot_lq')
        self.paths = self._image_list(key, self.lq_root, 'meta_info_file', LDR_FOLDER_EXTENSIONS, 'LDR')
        if self._bool_opt('cache_images', False):
            self.preload('ldr', self.paths, self.read_ldr)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        rng = sample_rng() if self.is_train else None
        n = len(self.paths)
        index, lq = self.load_robust('ldr', index % n, n, lambda i: self.read_ldr(self.paths[i]), rng)
        return {'lq': img2tensor(lq), 'lq_path': self.paths[index]}


@DATASET_REGISTRY.register()
class SingleHDRDataset(HDRDatasetBase):
    """HDR images to tone-map (the HDR->LDR direction, G_X), full resolution, no augmentation.

    Options (besides BasicSR's ``name``, ``type``, ``phase``, ``io_backend: {type: disk}``, loader keys):

    - ``dataroot_hdr`` (required; ``dataroot_lq`` is accepted instead, since BasicSR's test.py expands ``~`` only in
      ``dataroot_lq``/``dataroot_gt``): folder of ``.hdr``/``.exr``/``.pfm``/float TIFF images.
    - ``meta_info_file`` (optional): text file of image paths relative to that folder, one per line.
    - ``hdr_norm`` (default 99.5, as in training): per-image normalisation, a luminance percentile mapped to 1,
      ``'max'`` or ``'none'``; values above 1 are kept, not clipped.
    - ``cache_images`` (default false): keep decoded, normalised images in memory.

    Returns (``__getitem__``): ``{'hdr': (3, H, W) float32 linear RGB >= 0 (normalised), 'hdr_scale': float32
    scalar tensor (``hdr * hdr_scale`` = file values), 'hdr_path': str}``.
    """

    OPTION_KEYS = frozenset({'dataroot_hdr', 'dataroot_lq', 'meta_info_file', 'hdr_norm', 'cache_images'})

    def __init__(self, opt: dict) -> None:
        super().__init__(opt)
        if opt.get('dataroot_hdr') is not None and opt.get('dataroot_lq') is not None:
            logger.warning(f'{self.name}: both dataroot_hdr and dataroot_lq are set; using dataroot_hdr')
        key, self.hdr_root = self._folder_opt('dataroot_hdr', 'dataroot_lq')
        self.paths = self._image_list(key, self.hdr_root, 'meta_info_file', HDR_FOLDER_EXTENSIONS, 'HDR')
        self.hdr_percentile = parse_hdr_norm(opt.get('hdr_norm', DEFAULT_HDR_NORM))
        if self._bool_opt('cache_images', False):
            self.preload('hdr', self.paths, lambda p: self.read_hdr(p, self.hdr_percentile))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        rng = sample_rng() if self.is_train else None
        n = len(self.paths)
        index, (hdr, scale) = self.load_robust(
            'hdr', index % n, n, lambda i: self.read_hdr(self.paths[i], self.hdr_percentile), rng
        )
        return {
            'hdr': img2tensor(hdr),
            'hdr_scale': torch.tensor(scale, dtype=torch.float32),
            'hdr_path': self.paths[index],
        }
