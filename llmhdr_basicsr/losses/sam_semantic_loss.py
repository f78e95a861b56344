"""SAM semantic loss L_sem: the reconstruction must keep the segments SAM finds in the LDR input.

The paper [STATED] runs SAM on the histogram-equalised LDR input h(x) and on the tone-mapped reconstruction and
compares the two segmentations; how, and how it stays differentiable, is [UNKNOWN]. Two [INFERRED] formulations,
both built on the same fixed prompts and the same cached LDR masks:

- ``'segment_consistency'`` (the default): SAM runs only on h(x), without gradient, once
  per LDR image (cached). For each LDR mask the reconstruction's luminance should be coherent inside the segment:
  the loss is the area-weighted within-segment variance of the output luminance, divided by the output's total
  variance (``1 - R^2`` of explaining the output by segment membership; in [0, 1], invariant to the output's
  brightness and contrast). It is computed at SAM's mask resolution (4x the token grid, 56x56 at
  ``input_size=224``), so it acts on region-level structure, not on fine texture. No SAM pass on the
  reconstruction: nearly free once the LDR masks are cached.
- ``'mask_agreement'`` (option (b)): the reconstruction goes through SAM with the same point prompts; its mask
  logits are compared with the cached binary LDR masks by BCE + soft Dice. Gradients flow through the frozen SAM
  to the reconstruction. Closer to "SAM segments both and they are compared", but one ViT forward + backward per
  step.

Which LDR is segmented (``ldr_view``). Training crops are random, so SAM masks of the LDR *crop* are new at
every step and a cache of them never hits. With ``ldr_view: image`` (the default whenever the batch carries the
whole-image view of :mod:`llmhdr_basicsr.utils.ldr_view`, i.e. ``UnpairedLDRHDRDataset`` with ``global_size``):

1. SAM runs **once per image** on ``h(x_global)``, the equalised whole LDR image (resized to ``input_size``), without
   gradient; the binary masks are cached under the image digest and view size (memory LRU, and ``cache_dir`` on
   disk when given), so after the first epoch no SAM pass happens at all for ``segment_consistency``;
2. for each sample the masks are cut to its crop window (``ldr_window``) and given the crop's flip/rotation: bilinear
   resampling of the binary masks at the cell centres of a crop-aligned grid the size of SAM's mask grid
   (:func:`~llmhdr_basicsr.utils.ldr_view.cut_windows`), thresholded at 0.5 (like SAM's own upsampling of its mask
   logits). Binary, not soft: a soft border would count as within-segment variance that no output can remove, and
   its gradient would blur the reconstruction across segment borders;
3. masks that cover less than ``min_mask_fraction`` of the window, or more than ``1 - min_mask_fraction``, are
   weighted out (weight 0): an (almost) empty mask is a segment outside the crop, and a mask filling the window has
   within-segment variance = total variance, a constant 1 that carries no gradient and only dilutes the others. A
   sample with no mask left (a crop inside one segment) adds nothing;
4. the loss is the same ``segment_consistency`` as below, on the crop's reconstruction.

Resolution: a crop then sees the part of the whole-image mask grid under its window (a 256 px crop of a 1024 px
image: a quarter of the 56 x 56 grid at ``input_size=224``), resampled to the full grid: region-level structure at
the whole image's scale. Raise ``input_size`` (and the dataset's ``global_size`` with it) for finer segments.
``'mask_agreement'`` needs SAM's masks of the reconstruction crop *for the same prompts* as the LDR masks; a point
grid over the whole image has no counterpart on a crop, so that formulation always uses the crop (``ldr_view:
'image'`` with it is an error, ``'auto'`` means ``'crop'``). ``ldr_view: crop`` keeps the per-crop behaviour
(cached by the crop digest ``ldr_key``; hits only when the very same crop recurs).

Prompts: a regular ``points_per_side x points_per_side`` grid of single positive points (as SAM's automatic mask
generator does), each giving SAM's three multimask outputs; every mask is used (``3 * points_per_side^2`` masks).

Input size: SAM's encoder was trained at 1024 px with absolute position embeddings for a 64x64 token grid. Here the
image is resized (squashed, aspect ratio not kept) to ``input_size`` (a multiple of 16); the absolute position
embeddings are resized once (bicubic) to the smaller grid, and the prompt encoder is told the new sizes. The
relative position tables need no change: ``segment_anything.modeling.image_encoder.get_rel_pos`` interpolates them
to any token grid (global-attention blocks), and windowed blocks keep their 14x14 windows, padding the grid to a
multiple of 14. Multiples of 224 (14 tokens x 16 px) therefore avoid padding: at 256 px the 16x16 grid is padded to
28x28 and the windowed blocks do 3x the work of 224 px. Masks from a 1024-trained SAM are coarser at 224 px, which is
enough for region-level consistency; 448 is the next padding-free size.

Weights: segment-anything checkpoints from a local file only (``checkpoint`` option > ``LLMHDR_SAM_CHECKPOINT`` >
none); ``variant='tiny'`` builds a small random SAM for tests.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from segment_anything.build_sam import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from llmhdr_basicsr.utils.ldr_view import LDR_VIEWS, LDRGlobalView, cut_windows, resolve_ldr_view
from llmhdr_basicsr.utils.tonemap import hist_equalize, luminance
from llmhdr_basicsr.utils.weights import (
    LRUCache,
    check_cache_keys,
    freeze_module,
    load_into,
    load_state_dict_file,
    resolve_weights,
    warn_disabled,
)

SAM_ENV_VAR = 'LLMHDR_SAM_CHECKPOINT'
SAM_VARIANTS = ('vit_b', 'vit_l', 'vit_h', 'tiny')
SAM_FORMULATIONS = ('segment_consistency', 'mask_agreement')
_SAM_BUILDERS = {'vit_b': build_sam_vit_b, 'vit_l': build_sam_vit_l, 'vit_h': build_sam_vit_h}
_SAM_FILES = 'sam_vit_b_01ec64.pth for vit_b, sam_vit_l_0b3195.pth for vit_l, sam_vit_h_4b8939.pth for vit_h'


def build_tiny_sam() -> Sam:
    """A SAM with tiny widths and random weights (tests only): ViT 2 blocks x 32 ch, 32-ch prompts, 1-layer decoder.

    Built for SAM's native 1024 px input like the real variants, so it goes through the same input-size adaptation.
    """
    dim = 32
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=1024,
            patch_size=16,
            embed_dim=dim,
            depth=2,
            num_heads=2,
            mlp_ratio=2,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=14,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=2,
            iou_head_hidden_dim=dim,
        ),
    ).eval()


def set_sam_input_size(sam: Sam, size: int) -> None:
    """Adapt a SAM built for 1024 px to square ``size`` px inputs, in place (see the module docstring).

    Resizes the absolute position embeddings (bicubic) to the new token grid and updates the image encoder's and
    prompt encoder's size bookkeeping. Relative position tables are interpolated by SAM itself at run time.

    Args:
        sam: a ``segment_anything`` SAM (weights already loaded).
        size: input side in pixels, a multiple of the patch size (16).
    """
    enc = sam.image_encoder
    patch = enc.patch_embed.proj.kernel_size[0]
    if size % patch or size < 2 * patch:
        raise ValueError(f'SAMSemanticLoss: input_size must be a multiple of {patch} and >= {2 * patch}, got {size}')
    grid = size // patch
    if enc.pos_embed is not None and enc.pos_embed.shape[1:3] != (grid, grid):
        pos = enc.pos_embed.detach().permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(grid, grid), mode='bicubic', align_corners=False, antialias=True)
        enc.pos_embed = nn.Parameter(pos.permute(0, 2, 3, 1).contiguous(), requires_grad=False)
    enc.img_size = size
    prompt = sam.prompt_encoder
    prompt.image_embedding_size = (grid, grid)
    prompt.input_image_size = (size, size)
    prompt.mask_input_size = (4 * grid, 4 * grid)


def point_grid(points_per_side: int, size: int) -> torch.Tensor:
    """Regular grid of prompt points in SAM's input frame, like SAM's automatic mask generator.

    Returns:
        ``(P, 1, 2)`` float32 (x, y) pixel coordinates, ``P = points_per_side ** 2``, cell centres of an
        ``points_per_side x points_per_side`` grid over a ``size x size`` image.
    """
    if points_per_side < 1:
        raise ValueError(f'SAMSemanticLoss: points_per_side must be >= 1, got {points_per_side}')
    centres = (torch.arange(points_per_side, dtype=torch.float32) + 0.5) / points_per_side * size
    ys, xs = torch.meshgrid(centres, centres, indexing='ij')
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1).unsqueeze(1)


def segment_consistency(image: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Area-weighted within-segment variance of the luminance over its total variance, per image, then the mean.

    Args:
        image: ``(N, 3, H, W)`` display-referred RGB in [0, 1] (differentiable).
        masks: ``(N, M, h, w)`` binary segment masks (bool or {0, 1} float); the luminance is area-averaged to
            ``(h, w)`` first.
        eps: added to the total variance (a flat image scores 0).

    Returns:
        Scalar in [0, 1]: 0 = the image is constant inside every segment, 1 = the segments explain nothing. Images
        without any non-empty mask are skipped (0 if none is left).
    """
    lum = luminance(image)
    if lum.shape[-2:] != masks.shape[-2:]:
        lum = F.adaptive_avg_pool2d(lum, masks.shape[-2:])
    m = masks.to(lum.dtype)
    area = m.sum(dim=(2, 3))  # (N, M)
    mean = (m * lum).sum(dim=(2, 3)) / area.clamp(min=1)
    var_in = (m * (lum - mean[..., None, None]) ** 2).sum(dim=(2, 3)) / area.clamp(min=1)
    var_total = lum.var(dim=(1, 2, 3), unbiased=False)  # (N,)
    weight = area.sum(dim=1)
    valid = weight > 0
    if not valid.any():
        return image.sum() * 0.0
    ratio = (area * var_in).sum(dim=1) / weight.clamp(min=1) / (var_total + eps)
    return ratio[valid].mean()


def mask_agreement(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """BCE-with-logits plus soft Dice between mask logits and binary target masks.

    Args:
        logits: ``(N, M, h, w)`` SAM mask logits of the reconstruction (differentiable).
        targets: ``(N, M, h, w)`` binary LDR masks (bool or {0, 1}).
        eps: Dice smoothing (keeps empty masks finite).

    Returns:
        Scalar: mean BCE + mean (1 - Dice) over all masks.
    """
    t = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, t)
    p = torch.sigmoid(logits)
    dice = (2 * (p * t).sum(dim=(2, 3)) + eps) / (p.sum(dim=(2, 3)) + t.sum(dim=(2, 3)) + eps)
    return bce + (1 - dice).mean()


@LOSS_REGISTRY.register()
class SAMSemanticLoss(nn.Module):
    """Semantic segmentation loss L_sem with a frozen SAM; formulations in the module docstring.

    SAM is frozen (eval mode, ``requires_grad=False``, kept in eval mode when the owner calls ``.train()``). LDR
    masks come from ``hist_equalize`` of the whole LDR image (``ldr_view: image``, cut to each crop) or of the crop,
    without gradient, and are cached (memory LRU, plus ``.npy`` files under ``cache_dir`` when given, reused by later
    runs with the same SAM weights and settings): whole-image masks per image digest and view size, crop masks per
    ``keys``. A crop key must identify the exact pixels (the dataset's ``ldr_key`` digest, or
    ``'<ldr path>|<crop y0,x0,h,w>|<flip/rot>'``).

    Args:
        loss_weight: multiplier of the loss. Default: 1.0.
        variant: ``'vit_b'`` | ``'vit_l'`` | ``'vit_h'`` (SAM checkpoints), ``'tiny'`` (random tiny SAM, tests).
        checkpoint: local segment-anything checkpoint for ``variant``; None: ``$LLMHDR_SAM_CHECKPOINT``.
        allow_missing: with no checkpoint configured, or one that does not exist or cannot be loaded, switch off
            (``enabled = False``, one warning naming the file, forward returns 0) instead of raising.
        random_weights: random SAM weights, no file (tests, timing).
        input_size: side of SAM's square input in px (multiple of 16; multiples of 224 avoid window padding).
            Default: 224.
        points_per_side: prompt grid size; ``3 * points_per_side^2`` masks per image. Default: 4.
        cache_dir: folder for the on-disk LDR mask cache (one sub-folder per SAM fingerprint); None: memory only.
        formulation: ``'segment_consistency'`` (default; no SAM pass on the output) or ``'mask_agreement'``.
        cache_size: capacity of the in-memory mask cache (0 = off). Default: 10000 (about 19 kB each at the
            defaults, bit-packed).
        ldr_view: ``'image'`` (SAM once per whole LDR image, masks cut to each crop; the batch must carry the
            whole-image view), ``'crop'`` (SAM on the LDR crop), ``'auto'`` (``'image'`` when the batch carries the
            view and the formulation allows it, else ``'crop'``). See the module docstring. Default: ``'auto'``.
        min_mask_fraction: whole-image masks covering less than this fraction of a crop window, or more than
            ``1 -`` it, are weighted out for that crop (``ldr_view: image`` only). Default: 0.02.

    Attributes:
        enabled (bool): False when the loss switched itself off; the model checks it.
        cache (LRUCache): in-memory cache; ``cache.hits`` / ``cache.misses``; ``disk_hits`` counts disk reads.
        encoder_calls (int): SAM image-encoder passes so far; ``images_encoded``: images through it.
        fingerprint (str): hash of the SAM weights and the settings that shape the masks (names the disk cache).
        last_ldr_view (str | None): ``'image'`` or ``'crop'``, the LDR view the last forward call used.
    """

    def __init__(
        self,
        loss_weight: float = 1.0,
        variant: str = 'vit_b',
        checkpoint: str | None = None,
        allow_missing: bool = False,
        random_weights: bool = False,
        input_size: int = 224,
        points_per_side: int = 4,
        cache_dir: str | None = None,
        formulation: str = 'segment_consistency',
        cache_size: int = 10000,
        ldr_view: str = 'auto',
        min_mask_fraction: float = 0.02,
    ) -> None:
        super().__init__()
        if ldr_view not in LDR_VIEWS:
            raise ValueError(f'SAMSemanticLoss: ldr_view (train.sam_opt.ldr_view) must be one of {LDR_VIEWS}, got '
                             f'{ldr_view!r}')  # fmt: skip
        if ldr_view == 'image' and formulation == 'mask_agreement':
            raise ValueError(
                "SAMSemanticLoss: formulation 'mask_agreement' compares SAM masks of the crop and its reconstruction "
                "for the same prompts and cannot use the whole-image view: set train.sam_opt.ldr_view to 'crop' (or "
                "'auto'), or use formulation 'segment_consistency'"
            )
        if not 0 <= min_mask_fraction < 0.5:
            raise ValueError(f'SAMSemanticLoss: min_mask_fraction (train.sam_opt.min_mask_fraction) must be in '
                             f'[0, 0.5), got {min_mask_fraction}')  # fmt: skip
        if variant not in SAM_VARIANTS:
            raise ValueError(
                f'SAMSemanticLoss: unknown variant {variant!r} (train.sam_opt.variant); use {SAM_VARIANTS}'
            )
        if formulation not in SAM_FORMULATIONS:
            raise ValueError(
                f'SAMSemanticLoss: unknown formulation {formulation!r} (train.sam_opt.formulation); '
                f'use one of {SAM_FORMULATIONS}'
            )
        self.loss_weight = float(loss_weight)
        self.variant = variant
        self.formulation = formulation
        self.ldr_view = 'crop' if formulation == 'mask_agreement' else ldr_view
        self.min_mask_fraction = float(min_mask_fraction)
        self.last_ldr_view: str | None = None
        self.input_size = int(input_size)
        self.points_per_side = int(points_per_side)
        self.cache = LRUCache(cache_size)
        self.cache_dir = None if cache_dir in (None, '') else Path(os.path.expanduser(str(cache_dir)))
        self.disk_hits = 0
        self.encoder_calls = 0
        self.images_encoded = 0
        self.sam: Sam | None = None
        self.enabled = True
        self.checkpoint = None
        self.fingerprint = ''

        if not random_weights:
            try:
                self.checkpoint = resolve_weights(
                    checkpoint,
                    SAM_ENV_VAR,
                    f'SAM checkpoint for {variant}',
                    f'set train.sam_opt.checkpoint or {SAM_ENV_VAR} to a local segment-anything checkpoint '
                    f'({_SAM_FILES}), or set train.sam_opt.allow_missing: true to train without L_sem',
                    allow_missing=allow_missing,
                )
            except FileNotFoundError as err:  # a configured path that does not exist
                if not allow_missing:
                    raise
                self._disable(f'{err} (allow_missing: true)')
                return
            if self.checkpoint is None:
                self._disable(f'no SAM checkpoint configured; set train.sam_opt.checkpoint or {SAM_ENV_VAR} to enable '
                              'it')  # fmt: skip
                return

        sam = build_tiny_sam() if variant == 'tiny' else _SAM_BUILDERS[variant](checkpoint=None)
        if self.checkpoint is not None:
            try:
                load_into(sam, load_state_dict_file(self.checkpoint), self.checkpoint, f'SAM variant {variant!r}')
            except ValueError as err:  # not a checkpoint, or one of another variant
                if not allow_missing:
                    raise
                self._disable(f'{err} (allow_missing: true)')
                return
        set_sam_input_size(sam, self.input_size)
        self.sam = freeze_module(sam)
        self.register_buffer('points', point_grid(self.points_per_side, self.input_size), False)
        self.register_buffer('labels', torch.ones(self.points.shape[:2], dtype=torch.int64), False)
        self.fingerprint = self._fingerprint()

    def _disable(self, reason: str) -> None:
        """Switch the loss off with its one warning (``allow_missing``)."""
        self.enabled = False
        self.checkpoint = None
        warn_disabled('SAMSemanticLoss (L_sem)', reason)

    @property
    def mask_shape(self) -> tuple[int, int, int]:
        """``(M, h, w)`` of one image's masks: ``M = 3 * points_per_side^2``, ``h = w = 4 * input_size / 16``."""
        side = 4 * self.sam.prompt_encoder.image_embedding_size[0]
        return 3 * self.points.shape[0], side, side

    def _fingerprint(self) -> str:
        """Hash of everything that determines the LDR masks: weights (per-tensor sums), variant, sizes, prompts."""
        sums = torch.stack([t.detach().double().sum() for t in self.sam.state_dict().values()])
        digest = hashlib.sha1(sums.numpy().tobytes())
        digest.update(f'{self.variant}|{self.input_size}|{self.points_per_side}|multimask3|hist_eq'.encode())
        return digest.hexdigest()[:16]

    def train(self, mode: bool = True) -> SAMSemanticLoss:
        """Switch the module's mode; the frozen SAM always stays in eval mode."""
        super().train(mode)
        if self.sam is not None:
            self.sam.eval()
        return self

    def mask_logits(self, images: torch.Tensor) -> torch.Tensor:
        """SAM mask logits for the fixed point prompts.

        Args:
            images: ``(N, 3, H, W)`` display-referred RGB in [0, 1]; resized to ``input_size`` here. The graph is
                kept when ``images`` requires grad (gradients reach ``images``, never SAM).

        Returns:
            ``(N, M, h, w)`` float32 low-resolution mask logits (``mask_shape``), mask order = prompt-major, then
            SAM's three multimask outputs.
        """
        if self.sam is None:
            raise RuntimeError('SAMSemanticLoss is disabled (no SAM checkpoint); check .enabled first')
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'SAMSemanticLoss expects (N, 3, H, W) images, got {tuple(images.shape)}')
        sam = self.sam
        x = images.to(sam.pixel_mean.dtype)
        size = (self.input_size, self.input_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=True)
        x = (x * 255.0 - sam.pixel_mean) / sam.pixel_std  # SAM normalises 0..255 RGB
        self.encoder_calls += 1
        self.images_encoded += x.shape[0]
        embeddings = sam.image_encoder(x)
        with torch.no_grad():  # prompts are constants (fixed grid, frozen prompt encoder)
            sparse, dense = sam.prompt_encoder(points=(self.points, self.labels), boxes=None, masks=None)
            dense_pe = sam.prompt_encoder.get_dense_pe()
        logits = []
        for emb in embeddings:  # SAM's decoder takes one image with a batch of prompts
            low_res, _ = sam.mask_decoder(
                image_embeddings=emb.unsqueeze(0),
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
            logits.append(low_res.flatten(0, 1))
        return torch.stack(logits).float()

    def ldr_masks(self, ldr: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        """Binary SAM masks of the histogram-equalised LDR inputs (cached, no gradient).

        Args:
            ldr: ``(N, 3, H, W)`` LDR RGB, display-referred (sRGB), in [0, 1].
            keys: one string per image identifying its exact pixels; None: no caching.

        Returns:
            ``(N, M, h, w)`` bool on ``ldr``'s device (``mask_shape``; SAM's threshold: logit > 0).
        """
        if keys is None:
            with torch.no_grad():
                return self.mask_logits(hist_equalize(ldr)) > 0
        return self._cached_masks(ldr, check_cache_keys(keys, ldr.shape[0], type(self).__name__), ldr.device)

    def view_masks(self, view: LDRGlobalView, device: torch.device | str | None = None) -> torch.Tensor:
        """Binary SAM masks of the equalised **whole** LDR images ``h(x_global)`` (cached per image, no gradient).

        Args:
            view: the batch's whole-image LDR view (images display-referred sRGB in [0, 1], on any device); only the
                images missing from the caches are equalised, moved to SAM's device and segmented.
            device: where the result goes (default: SAM's device).

        Returns:
            ``(N, M, h, w)`` bool (``mask_shape``) over the whole image (squashed to a square like SAM's input).
        """
        return self._cached_masks(view.images, view.cache_keys, device or self.points.device)

    def window_masks(self, view: LDRGlobalView, device: torch.device | str | None = None) -> torch.Tensor:
        """The whole-image masks of :meth:`view_masks` cut to each sample's crop window and flip (module docstring).

        Args:
            view: the batch's whole-image LDR view (``windows``: crop window and flip code per sample).
            device: where the result goes (default: SAM's device).

        Returns:
            ``(N, M, h, w)`` float32 binary masks (0/1) on the crop's grid (``mask_shape``, in the crop's
            orientation); masks covering less than ``min_mask_fraction`` or more than ``1 - min_mask_fraction`` of
            the window are all zero.
        """
        masks = self.view_masks(view, device)
        cut = (cut_windows(masks, view.windows, masks.shape[-2:]) > 0.5).float()
        coverage = cut.mean(dim=(2, 3), keepdim=True)
        f = self.min_mask_fraction
        return cut * ((coverage >= f) & (coverage <= 1 - f)).to(cut.dtype)

    def _cached_masks(self, ldr: torch.Tensor, keys: list[str], device) -> torch.Tensor:
        """Masks of ``hist_equalize(ldr)`` rows by key: memory, then disk, then SAM for the misses (stored in both).

        One look-up per distinct key: samples sharing a key (two crops of one image) are looked up and segmented once.
        """
        found: dict[str, np.ndarray | None] = {}
        for key in dict.fromkeys(keys):
            packed = self.cache.get(key)
            if packed is None:
                packed = self._disk_get(key)
                if packed is not None:
                    self.disk_hits += 1
                    self.cache.put(key, packed)
            found[key] = packed
        todo = [key for key, packed in found.items() if packed is None]
        if todo:
            rows = [keys.index(key) for key in todo]
            with torch.no_grad():  # equalised on the CPU anyway; only the misses go to SAM's device
                fresh = (self.mask_logits(hist_equalize(ldr[rows]).to(self.points.device)) > 0).cpu().numpy()
            for key, masks in zip(todo, fresh):
                found[key] = np.packbits(masks.reshape(-1))
                self.cache.put(key, found[key])
                self._disk_put(key, found[key])
        shape = self.mask_shape
        count = shape[0] * shape[1] * shape[2]
        masks = np.stack([np.unpackbits(found[key], count=count).reshape(shape) for key in keys]).astype(bool)
        return torch.from_numpy(masks).to(device)

    def _disk_path(self, key: str) -> Path:
        return self.cache_dir / self.fingerprint / f'{hashlib.sha1(key.encode()).hexdigest()}.npy'

    def _disk_get(self, key: str) -> np.ndarray | None:
        if self.cache_dir is None:
            return None
        path = self._disk_path(key)
        if not path.is_file():
            return None
        shape = self.mask_shape
        try:
            packed = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # truncated/corrupt file: recompute and overwrite
            return None
        expected = (shape[0] * shape[1] * shape[2] + 7) // 8
        return packed if packed.dtype == np.uint8 and packed.shape == (expected,) else None

    def _disk_put(self, key: str, packed: np.ndarray) -> None:
        if self.cache_dir is None:
            return
        path = self._disk_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f'{path.stem}.{os.getpid()}.tmp.npy')
        np.save(tmp, packed, allow_pickle=False)
        os.replace(tmp, path)  # atomic: concurrent workers never read half a file

    def forward(
        self,
        output: torch.Tensor,
        ldr: torch.Tensor,
        keys: Sequence[str] | None = None,
        global_view: LDRGlobalView | None = None,
    ) -> torch.Tensor:
        """L_sem between the reconstruction and the SAM segments of the equalised LDR input.

        Args:
            output: ``(N, 3, H, W)`` reconstruction, display-referred in [0, 1] (the tone-mapped HDR output, or the
                LDR output of G_X). Gradients flow to it.
            ldr: ``(N, 3, H, W)`` LDR input x, display-referred (sRGB) in [0, 1]; equalised here, never
                differentiated.
            keys: per-image cache keys of ``ldr``, or None; used in ``crop`` mode.
            global_view: the whole-image LDR view of the batch (:meth:`LDRGlobalView.from_batch`), or None; decides
                the mode with ``ldr_view`` (module docstring).

        Returns:
            Scalar tensor, ``loss_weight * L_sem`` (0 when disabled).
        """
        if not self.enabled:
            return output.new_zeros(())
        if output.dim() != 4 or output.shape[:2] != ldr.shape[:2] or output.shape[1] != 3:
            raise ValueError(
                f'SAMSemanticLoss: need (N, 3, H, W) output and ldr, got {tuple(output.shape)}, {tuple(ldr.shape)}'
            )
        if resolve_ldr_view(self.ldr_view, global_view, output.shape[0], type(self).__name__, 'train.sam_opt.ldr_view'):
            self.last_ldr_view = 'image'
            return self.loss_weight * segment_consistency(output, self.window_masks(global_view, output.device))
        self.last_ldr_view = 'crop'
        targets = self.ldr_masks(ldr, keys)
        if self.formulation == 'mask_agreement':
            loss = mask_agreement(self.mask_logits(output), targets)
        else:
            loss = segment_consistency(output, targets)
        return self.loss_weight * loss
