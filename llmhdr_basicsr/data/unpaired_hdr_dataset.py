"""UnpairedLDRHDRDataset: the training data of CycleHDR, one LDR photo and one unrelated HDR image per sample."""

from __future__ import annotations

import hashlib
import logging
import math
import os.path as osp

import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY

from llmhdr_basicsr.utils.camera import (
    CameraParams,
    apply_camera,
    exposure_for_clip_fraction,
    exposure_from_rank_sample,
    random_camera,
)
from llmhdr_basicsr.utils.ldr_view import FLIP_PROBE, crop_window, flip_code_from_probe
from llmhdr_basicsr.utils.weights import LRUCache

from .dataset_util import (
    HDR_FOLDER_EXTENSIONS,
    LDR_FOLDER_EXTENSIONS,
    HDRDatasetBase,
    ensure_finite,
    global_view_np,
    image_digest,
    sample_rng,
)
from .hdr_transforms import DEFAULT_HDR_NORM, img2tensor, parse_hdr_norm, random_crop, random_flip_rot
from .training_store import check_store_hdr_norm, open_store

logger = logging.getLogger('basicsr.llmhdr')

#: Default side of the whole-image LDR view ``ldr_global`` (CLIP ViT-B-32's and SAMSemanticLoss's input size).
DEFAULT_GLOBAL_SIZE = 224
#: Memory bound of the per-path memo of global views (uint8, 3 G^2 bytes each: ~1800 images at G = 224).
GLOBAL_MEMO_BYTES = 256 * 2**20


def parse_global_size(value: object, name: str) -> int | None:
    """``global_size`` option -> the side of the whole-image LDR view in pixels, or None (null/0: view off)."""
    if value is None or (value == 0 and not isinstance(value, bool)):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name}: option global_size must be a positive integer (pixels), or 0/null to switch the '
                         f'whole-image LDR view off, got {value!r}')  # fmt: skip
    return value


def parse_exposure_range(value: object, name: str) -> tuple[float, float] | None:
    """``hdr_exposure_aug`` option -> ``(low, high)`` in stops, or None when off (None/false)."""
    if value is None or value is False:
        return None
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and value[0] <= value[1]
    ):
        return float(value[0]), float(value[1])
    raise ValueError(f'{name}: option hdr_exposure_aug must be null or [low, high] in stops (low <= high), got '
                     f'{value!r}')  # fmt: skip


@DATASET_REGISTRY.register()
class UnpairedLDRHDRDataset(HDRDatasetBase):
    """Unpaired LDR and HDR images for cycle-consistent training (CycleHDR; ``docs/method.md``).

    The two domains are unrelated: sample ``i`` is LDR image ``i`` together with an HDR image drawn **at random**
    (uniformly, anew at every ``__getitem__``), so every epoch pairs the LDR images with different HDR images — unlike
    ``index % len`` pairing, which repeats the same pairs each epoch (a pitfall of some unpaired code bases; the
    random partner is CycleGAN's ``unaligned_dataset``). ``len(dataset)`` is the number of LDR images: one
    epoch shows every LDR image once and on average ``len(LDR) / len(HDR)`` draws of each HDR image. In the val/test
    phases the partner is ``hdr[index % len(HDR)]`` instead, so that validation is repeatable.

    Options (besides BasicSR's ``name``, ``type``, ``phase``, ``io_backend: {type: disk}``, loader keys):

    - ``dataroot_ldr``, ``dataroot_hdr`` (required): folders. LDR: 8/16-bit PNG/TIFF/JPEG/BMP/WebP. HDR:
      ``.hdr``/``.exr``/``.pfm``/float TIFF. Or **training stores** (``scripts/prepare_data.py store``, detected by
      their ``store.json``; :mod:`llmhdr_basicsr.data.training_store`): the samples are then the store's tiles, and
      what this loader computes on the whole image comes from the tile's **source frame** instead: the ``hdr_norm``
      scale (the store's percentile must equal ``hdr_norm``, or ``hdr_norm`` is ``'none'``), the virtual camera's
      exposure (from the frame's exposure statistic, see :func:`~llmhdr_basicsr.utils.camera.exposure_from_rank_sample`
      for its tolerance), and ``ldr_image_key`` / ``ldr_global`` / ``ldr_window`` (the frame's digest, its stored
      thumbnail, the crop window in frame coordinates). ``global_size`` must not exceed the store's thumbnail size.
    - ``meta_info_ldr``, ``meta_info_hdr`` (optional): text files with one image path per line, relative to the
      matching ``dataroot_*`` (sub-folders allowed); they replace the folder listing.
    - ``crop_size`` (default 256): train phase: a random ``crop_size``-square crop of each image (chosen independently
      in the two domains); images smaller than that are reflect-padded first (:func:`pad_to_size`). ``null``: no crop
      (then every image in a batch must have the same size). Val/test: never cropped.
    - ``use_hflip`` (default true), ``use_rot`` (default false): train-phase flips/90-degree rotations, drawn
      independently for the two domains.
    - ``hdr_norm`` (default 99.5): per-image HDR normalisation applied to the **whole** image before cropping: a
      number = the luminance percentile mapped to 1; ``'max'`` = the maximum mapped to 1; ``'none'`` = file values.
      Values above 1 are kept, not clipped (:func:`normalize_hdr_np`, with a fall-back to the maximum for images that
      are black at that percentile).
    - ``hdr_exposure_aug`` (default null = off): ``[low, high]`` in stops; train phase: the normalised HDR crop is
      multiplied by ``2 ** U(low, high)``.
    - ``maps_cache`` (optional): a perception cache folder written by ``llmhdr-perceive`` (the paper's artifact,
      over- and under-exposure maps of the LDR input from a VLM, keyed by file content and prompt; see
      :mod:`llmhdr_basicsr.perception.cache`); ``maps_cache_model`` / ``maps_cache_config`` choose the configuration
      when the folder holds several. The maps are resized to the LDR image and cut/flipped with the same window. An
      image without an entry gets zeros and ``ldr_maps_valid = 0`` (the model then uses the heuristic maps for it;
      the first miss is logged, later ones counted by the cache) so that batches always collate.
    - ``cache_images`` (default false): keep all decoded (and normalised) images in memory, see
      :mod:`llmhdr_basicsr.data.dataset_util`.
    - ``global_size`` (default 224): side of the whole-image LDR view ``ldr_global`` that the CLIP/SAM losses cache
      per image (:mod:`llmhdr_basicsr.utils.ldr_view`: with random crops a crop-keyed cache never hits).
      Use at least the CLIP/SAM input size (224 for ViT-B-32 and SAMSemanticLoss's default), or detail is lost.
      ``0`` / ``null``: no whole-image view; the three ``ldr_global`` / ``ldr_image_key`` / ``ldr_window`` keys are
      then absent and the losses fall back to the crop (cached by ``ldr_key``, which random crops rarely repeat).
    - ``virtual_camera`` (default null = off): train phase: also photograph each HDR crop with a random virtual camera
      (:mod:`llmhdr_basicsr.utils.camera`: random CRF, gamma or sigmoid, exposure chosen on the **whole** normalised
      image so that a random 2-16 % of its pixels clip, 8-bit quantisation), for the model's virtual-camera cycle
      ``camera_opt``. ``true`` = the default camera distribution; a dict = keyword arguments of
      :func:`~llmhdr_basicsr.utils.camera.random_camera` (``clip_range``, ``gamma_range``, ``sigmoid_prob``, ...).
      Uses only the HDR set: the training data stay unpaired.

    Returns (``__getitem__``): a dict with

    - ``'ldr'``: ``(3, h, w)`` float32 RGB, display-referred (sRGB-encoded), in [0, 1];
    - ``'ldr_key'``: a digest of exactly these LDR pixels (crop and flips included): the CLIP/SAM cache key in their
      ``ldr_view: crop`` mode;
    - with ``global_size`` (the default), the whole-image LDR view of :mod:`llmhdr_basicsr.utils.ldr_view`:
      ``'ldr_image_key'`` (str, a digest of the whole decoded LDR image, the same for every crop of it),
      ``'ldr_global'`` (``(3, G, G)`` float32 display-referred sRGB in [0, 1], the whole image resized to
      ``G = global_size``, 8-bit quantised, see :func:`global_view_np`) and ``'ldr_window'`` (float32 ``(5,)``:
      ``[y0, x0, y1, x1, flip_code]``, the crop window in normalised coordinates of the unpadded image and the
      flips/rotation applied after cutting; ``[0, 0, 1, 1, 0]`` when nothing was cut or flipped). Key and view are
      memoised per path (the view in a bounded memo, :data:`GLOBAL_MEMO_BYTES`; every image with ``cache_images``).
      Inside non-persistent DataLoader workers the memo lasts one epoch, so a sample then costs one digest of the
      decoded image and one resize on top of the read (measured: 8 ms and 2 ms against 65 ms to read a 0.9 MP PNG);
    - ``'hdr'``: ``(3, h', w')`` float32 linear RGB, >= 0, normalised as above (may exceed 1);
    - ``'hdr_scale'``: float32 scalar tensor, ``hdr * hdr_scale`` gives the file's values (exposure aug included);
    - ``'ldr_path'``, ``'hdr_path'``: str;
    - with ``virtual_camera``: ``'cam_ldr'`` ``(3, h', w')`` float32 display-referred LDR in [0, 1], the HDR crop as the
      virtual camera photographed it, and ``'cam_exposure'`` float32 scalar: ``hdr * cam_exposure`` is that photo's
      linear scene with its clipping level at 1 (the generator's convention for diffuse white);
    - with ``maps_cache``: ``'ldr_maps'`` ``(3, h, w)`` float32 in [0, 1] (channel order as stored) and
      ``'ldr_maps_valid'`` float32 scalar 1.0 / 0.0.
    """

    OPTION_KEYS = frozenset(
        {
            'dataroot_ldr', 'dataroot_hdr', 'meta_info_ldr', 'meta_info_hdr', 'crop_size', 'use_hflip', 'use_rot',
            'hdr_norm', 'hdr_exposure_aug', 'maps_cache', 'maps_cache_model', 'maps_cache_config', 'cache_images',
            'virtual_camera', 'global_size',
        }
    )  # fmt: skip

    def __init__(self, opt: dict) -> None:
        super().__init__(opt)
        ldr_key, self.ldr_root = self._folder_opt('dataroot_ldr')
        hdr_key, self.hdr_root = self._folder_opt('dataroot_hdr')
        self.ldr_store = open_store(self.ldr_root, ldr_key, 'ldr', 'meta_info_ldr', opt, self.name)
        self.hdr_store = open_store(self.hdr_root, hdr_key, 'hdr', 'meta_info_hdr', opt, self.name)
        if self.ldr_store is not None:
            self.ldr_paths = self.ldr_store.paths
        else:
            self.ldr_paths = self._image_list(ldr_key, self.ldr_root, 'meta_info_ldr', LDR_FOLDER_EXTENSIONS, 'LDR')
        if self.hdr_store is not None:
            self.hdr_paths = self.hdr_store.paths
        else:
            self.hdr_paths = self._image_list(hdr_key, self.hdr_root, 'meta_info_hdr', HDR_FOLDER_EXTENSIONS, 'HDR')
        self.crop_size = self._crop_opt(256)
        self.use_hflip = self._bool_opt('use_hflip', True)
        self.use_rot = self._bool_opt('use_rot', False)
        self.hdr_percentile = parse_hdr_norm(opt.get('hdr_norm', DEFAULT_HDR_NORM))
        self.exposure_range = parse_exposure_range(opt.get('hdr_exposure_aug'), self.name)
        self.maps_cache = self._open_maps_cache(opt)
        self.virtual_camera = self._camera_opt(opt.get('virtual_camera'))
        self.global_size = parse_global_size(opt.get('global_size', DEFAULT_GLOBAL_SIZE), self.name)
        self._check_stores()
        # Per-path memos of the whole-image LDR side: digests (tiny, unbounded) and global views (bounded).
        self._image_keys: dict[str, str] = {}
        memo_entries = GLOBAL_MEMO_BYTES // (3 * self.global_size**2) if self.global_size else 0
        self._global_views = LRUCache(max(memo_entries, 1))
        if self._bool_opt('cache_images', False):
            self.preload('ldr', self.ldr_paths, self.read_ldr)
            self.preload('hdr', self.hdr_paths, self.read_hdr_sample)
            if self.global_size:  # the decoded images are in memory anyway: memoise every view
                self._global_views = LRUCache(max(len(self.ldr_paths), 1))
                for path in self.ldr_paths:
                    if ('ldr', path) in self._cache:
                        self.ldr_image_view(path, self._cache[('ldr', path)])

    def __len__(self) -> int:
        return len(self.ldr_paths)

    def _check_stores(self) -> None:
        """The options must agree with what the training stores hold (hdr_norm percentile, thumbnail size)."""
        check_store_hdr_norm(self.hdr_store, self.hdr_percentile, 'dataroot_hdr', self.name)
        ldr = self.ldr_store
        if ldr is not None and self.global_size and self.global_size > ldr.thumbnail_size:
            raise ValueError(f'{self.name}: option global_size {self.global_size} exceeds the {ldr.thumbnail_size} px '
                             f'thumbnails of the training store {ldr.folder} (dataroot_ldr); set global_size <= '
                             f'{ldr.thumbnail_size}, or rebuild the store with prepare_data.py store '
                             f'--thumbnail-size {self.global_size}')  # fmt: skip

    def read_hdr_sample(self, path: str) -> tuple[np.ndarray, float]:
        """One normalised HDR image (:meth:`read_hdr`); a store tile is divided by its whole frame's scale."""
        if self.hdr_store is None or self.hdr_percentile is None:
            return self.read_hdr(path, self.hdr_percentile)
        return self.read_hdr(path, self.hdr_percentile, scale=self.hdr_store.frame_stats(path).norm_scale)

    def frame_exposure(self, path: str, hdr: np.ndarray, scale: float, camera: CameraParams) -> float:
        """The virtual camera's exposure for the whole frame of the normalised HDR image ``hdr`` read from ``path``.

        A plain file: :func:`exposure_for_clip_fraction` on the image (stride 2). A store tile: from its source
        frame's exposure statistic, normalised by the same ``scale`` (:func:`exposure_from_rank_sample`).
        """
        if self.hdr_store is None:
            return exposure_for_clip_fraction(hdr, camera.clip_fraction, camera.wb_gains, stride=2)
        sample = self.hdr_store.frame_stats(path).peak_sample
        if scale != 1.0:
            sample = sample / np.float32(scale)
        return exposure_from_rank_sample(sample, camera.clip_fraction, camera.wb_gains)

    def ldr_frame_geometry(self, path: str, img: np.ndarray) -> tuple[int, int, int, int]:
        """``(top, left, height, width)``: where the LDR image ``img`` lies in its whole frame (a store tile), or
        ``(0, 0, H, W)`` for a plain file (the image is the frame)."""
        if self.ldr_store is None:
            return 0, 0, img.shape[0], img.shape[1]
        y0, x0 = self.ldr_store.tile(path).box[:2]
        stats = self.ldr_store.frame_stats(path)
        return y0, x0, stats.height, stats.width

    def _camera_opt(self, value: object) -> dict | None:
        """``virtual_camera`` option -> keyword arguments of :func:`random_camera`, or None when off."""
        if value is None or value is False:
            return None
        kwargs = {} if value is True else value
        if not isinstance(kwargs, dict):
            raise ValueError(f'{self.name}: option virtual_camera must be null, true or a dict, got {value!r}')
        try:
            random_camera(np.random.default_rng(0), **kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f'{self.name}: invalid option virtual_camera {kwargs}: {err}') from err
        return dict(kwargs)

    # ------------------------------------------------------------------------------------------------ maps
    def _open_maps_cache(self, opt: dict):
        """The :class:`~llmhdr_basicsr.perception.cache.PerceptionCache` written by ``llmhdr-perceive``, or None."""
        if opt.get('maps_cache') is None:
            return None
        from llmhdr_basicsr.perception.cache import PerceptionCache

        cache = PerceptionCache.open(
            osp.expanduser(str(opt['maps_cache'])),
            model=opt.get('maps_cache_model'),
            config=opt.get('maps_cache_config'),
        )
        found = sum(cache.contains(p) for p in self.ldr_paths)
        msg = f'{self.name}: {cache!r} holds perception maps for {found} of {len(self.ldr_paths)} LDR images'
        (logger.info if found else logger.warning)(msg)
        return cache

    def read_maps(self, ldr_path: str, height: int, width: int) -> np.ndarray | None:
        """``(H, W, 3)`` float32 maps in [0, 1] of one LDR image, or None (missing entry: heuristic fallback)."""
        maps = self.maps_cache.lookup(ldr_path, (height, width))
        return None if maps is None else np.ascontiguousarray(maps.transpose(1, 2, 0))

    # ------------------------------------------------------------------------------------------------ global view
    def ldr_image_view(self, path: str, img: np.ndarray) -> tuple[str, np.ndarray]:
        """Digest and ``(G, G, 3)`` uint8 global view of the whole LDR image ``img`` read from ``path`` (memoised).

        For a training-store tile: its source frame's stored digest and thumbnail (not computed from the tile).
        """
        if self.ldr_store is not None:
            return self.ldr_store.global_view(path, self.global_size)
        key = self._image_keys.get(path)
        if key is None:
            key = self._image_keys[path] = image_digest(img)
        view = self._global_views.get(path)
        if view is None:
            view = global_view_np(img, self.global_size)
            self._global_views.put(path, view)
        return key, view

    # ------------------------------------------------------------------------------------------------ sample
    def __getitem__(self, index: int) -> dict:
        rng = sample_rng() if self.is_train else None
        n_ldr, n_hdr = len(self.ldr_paths), len(self.hdr_paths)
        ldr_index, ldr = self.load_robust('ldr', index % n_ldr, n_ldr, lambda i: self.read_ldr(self.ldr_paths[i]), rng)
        # The HDR partner: random in training (genuinely unpaired), fixed in val/test (repeatable validation).
        first_hdr = int(rng.integers(n_hdr)) if self.is_train else index % n_hdr
        hdr_index, (hdr, scale) = self.load_robust(
            'hdr', first_hdr, n_hdr, lambda i: self.read_hdr_sample(self.hdr_paths[i]), rng
        )
        ldr_path, hdr_path = self.ldr_paths[ldr_index], self.hdr_paths[hdr_index]
        full_h, full_w = ldr.shape[:2]
        frame_top, frame_left, frame_h, frame_w = self.ldr_frame_geometry(ldr_path, ldr)
        image_view = self.ldr_image_view(ldr_path, ldr) if self.global_size else None
        ldr_parts = [ldr]
        maps = None
        if self.maps_cache is not None:
            maps = self.read_maps(ldr_path, *ldr.shape[:2])
            if maps is not None:
                ldr_parts.append(maps)

        camera = None
        if self.is_train and self.virtual_camera is not None:  # exposure fixed on the whole frame, as a camera would
            camera = random_camera(rng, **self.virtual_camera)
            camera.exposure = self.frame_exposure(hdr_path, hdr, scale, camera)
        top, left, crop_h, crop_w, flip_code = 0, 0, full_h, full_w, 0
        if self.is_train:
            if self.crop_size is not None:
                ldr_parts, (top, left) = random_crop(ldr_parts, self.crop_size, rng)  # maps share the LDR window
                # random_crop pads small images (pad_to_size: half of the padding on top/left): unpadded coordinates
                top -= max(self.crop_size - full_h, 0) // 2
                left -= max(self.crop_size - full_w, 0) // 2
                crop_h = crop_w = self.crop_size
                (hdr,), _ = random_crop([hdr], self.crop_size, rng)
            # The probe goes through the same flip/rotation as the LDR crop and tells which one it was (ldr_window).
            *ldr_parts, probe = random_flip_rot([*ldr_parts, FLIP_PROBE], rng, self.use_hflip, self.use_rot)
            flip_code = flip_code_from_probe(probe)
            (hdr,) = random_flip_rot([hdr], rng, self.use_hflip, self.use_rot)
            if self.exposure_range is not None:
                gain = 2.0 ** rng.uniform(*self.exposure_range)
                hdr, scale = ensure_finite(hdr * np.float32(gain), hdr_path), scale / gain
                if camera is not None:  # the same photograph of the scene, whatever the augmentation gain
                    camera.exposure /= gain

        out = {
            'ldr': img2tensor(ldr_parts[0]),
            'hdr': img2tensor(hdr),
            'hdr_scale': torch.tensor(scale, dtype=torch.float32),
            'ldr_path': ldr_path,
            'hdr_path': hdr_path,
        }
        # Names these exact LDR pixels (crop and flips included): the CLIP/SAM cache key in their 'crop' mode.
        out['ldr_key'] = hashlib.blake2b(out['ldr'].numpy().tobytes(), digest_size=10).hexdigest()
        if image_view is not None:  # the whole-image LDR side (llmhdr_basicsr.utils.ldr_view)
            out['ldr_image_key'] = image_view[0]
            out['ldr_global'] = torch.from_numpy(image_view[1].transpose(2, 0, 1).astype(np.float32) / 255.0)
            window = crop_window(frame_top + top, frame_left + left, crop_h, crop_w, frame_h, frame_w, flip_code)
            out['ldr_window'] = torch.from_numpy(window)
        if camera is not None:
            out['cam_ldr'] = img2tensor(apply_camera(hdr, camera))
            out['cam_exposure'] = torch.tensor(camera.exposure, dtype=torch.float32)
        if self.maps_cache is not None:
            h, w = out['ldr'].shape[1:]
            out['ldr_maps'] = img2tensor(ldr_parts[1]) if maps is not None else torch.zeros(3, h, w)
            out['ldr_maps_valid'] = torch.tensor(float(maps is not None))
        return out
