"""``llmhdr-infer``: reconstruct HDR from LDR photos (or tone-map HDR) at full resolution, one file or a folder.

Usage::

    llmhdr-infer -i photo.jpg -o results/                                  # the model that ships with the package
    llmhdr-infer -i photos/ -o results/ --weights net_g_200000.pth -opt options/llmhdr.yml
    llmhdr-infer -i photo.jpg -o results/ --arch MasiaITMO                 # a classical baseline, no weights
    llmhdr-infer -i scenes/ -o ldr/ --direction hdr2ldr --weights net_g_hdr2ldr_200000.pth -opt options/llmhdr.yml

(also ``python -m llmhdr_basicsr.infer``). Every input keeps its name: ``<stem><suffix>.exr`` (linear HDR) and
``<stem><suffix>_<preview>.png`` (a tone-mapped 8-bit preview next to it) for LDR->HDR;
``<stem><suffix>.png`` (8 or 16 bit) for HDR->LDR. Unreadable files are skipped with a warning and listed at the end;
the exit status is 0 when every input was written, 1 when any was skipped (the others are still written), 2 for a
usage or set-up error.

Which network (first match wins; a checkpoint and an option file that disagree are not mixed silently):

1. ``--arch NAME``: any registered architecture built with its defaults, e.g. the parameter-free baselines
   ``LinearizeITMO``, ``AkyuzITMO``, ``MasiaITMO``, ``KovaleskiOliveiraITMO`` (no ``--weights`` needed);
2. ``-opt FILE``: the ``network_g`` block (``network_g_hdr2ldr`` for ``--direction hdr2ldr``) of a BasicSR option
   file; ``--weights`` defaults to its ``path.pretrain_network_g[_hdr2ldr]``;
3. the checkpoint's own ``'arch'`` entry ``{'type': NAME, 'kwargs': {...}}`` (written by
   :func:`save_inference_checkpoint`); plain BasicSR checkpoints have none: pass ``-opt`` then;
4. none of these: the model that ships with the package (:mod:`llmhdr_basicsr.pretrained`: both generators of
   ``options/llmhdr_cpu.yml`` trained on the example data).

Checkpoints are BasicSR's ``{'params': ..., 'params_ema': ...}`` dicts (``--param-key``; default ``params_ema`` when
present, else ``params``), loaded on the CPU with ``torch.load(weights_only=True)``; missing or unexpected keys are
an error that lists them.

Value conventions (``docs/method.md`` and ``CycleHDRModel.to_linear`` / ``to_model_hdr``):

- LDR->HDR input: 8/16-bit sRGB (grey is replicated to RGB, alpha dropped), display-referred in [0, 1]. The
  FeedbackUNet outputs ``T(H / 2^headroom)`` (mu-law, mu = 5000); the written file is linear Rec.709 RGB
  ``H = mu_law_inverse(y) * 2^headroom``.
- ``--scale relative`` (default): ``H`` as the network produces it: 1.0 = the normalisation white of training (the HDR
  side of the training data is divided by its 99.5th luminance percentile; about the LDR clipping level), highlights
  up to ``2^headroom``. Baselines: 1.0 = the operator's peak output.
- ``--scale absolute``: ``H`` multiplied so that its 99.9th luminance percentile (``--percentile``) is
  ``--peak-nits`` cd/m² (default 1000), the same anchoring as ``llmhdr-eval``'s PU21 / ColorVideoVDP scaling
  (:func:`llmhdr_basicsr.metrics.hdr_metric.absolute_scale`), so the brightest 0.1 % may exceed the peak.
- HDR->LDR input: float ``.hdr``/``.exr``/``.pfm``/``.tif``, normalised per image as in training (``--hdr-norm``:
  99.5th luminance percentile -> 1), then ``T(min(H / 2^headroom, 1))``; output display-referred sRGB in [0, 1].

Large images run tile by tile (``--tile``, default 512; 0 = whole image at once) with the input kept on the CPU and
global instance-norm statistics shared by all tiles (:class:`llmhdr_basicsr.utils.tiling.GlobalStatsTiler`).
Parameter-free baselines are always run untiled: they use image-wide statistics (key, maxima) and are cheap.
"""

from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from llmhdr_basicsr.utils.defaults import DEFAULT_OVERLAP, DEFAULT_TILE, PREVIEW_OPERATORS
from llmhdr_basicsr.utils.hdr_io import (
    FLOAT_CAPABLE_EXTENSIONS,
    HDR_EXTENSIONS,
    LDR_EXTENSIONS,
    ImageReadError,
    list_images,
    read_image,
    write_hdr,
    write_ldr,
)

if TYPE_CHECKING:  # torch (about 2 s to import) is imported where it is used, after the arguments are parsed
    import torch
    from torch import nn

logger = logging.getLogger('llmhdr_basicsr.infer')

DIRECTIONS = ('ldr2hdr', 'hdr2ldr')
NETWORK_KEYS = {'ldr2hdr': 'network_g', 'hdr2ldr': 'network_g_hdr2ldr'}
HDR_OUT_EXTS = ('exr', 'hdr', 'pfm')
LDR_OUT_EXTS = ('png', 'tif')
PARAM_KEYS = ('auto', 'params_ema', 'params')


class UsageError(Exception):
    """A set-up problem (bad option, missing weights, wrong checkpoint): reported as ``error: ...``, exit status 2."""


class SkipImage(Exception):
    """One input cannot be processed (unreadable, wrong kind): skipped with this message."""


# ---------------------------------------------------------------------------------------------- checkpoints
def save_inference_checkpoint(path: str, state_dict: dict, arch_opt: dict, param_key: str = 'params') -> None:
    """Write a BasicSR-style checkpoint that also records its architecture, so ``llmhdr-infer`` needs no ``-opt``.

    Args:
        path: output ``.pth`` file.
        state_dict: the network's ``state_dict()`` (tensors are moved to the CPU).
        arch_opt: the BasicSR network block, e.g. ``{'type': 'FeedbackUNet', 'num_feat': 64, 'headroom': 4}``.
        param_key: key of the weights (``'params'`` or ``'params_ema'``).

    The file holds ``{param_key: state_dict, 'arch': {'type': NAME, 'kwargs': {...}}, 'version': str}``; only plain
    Python values and tensors, so ``torch.load(weights_only=True)`` reads it.
    """
    import torch

    from llmhdr_basicsr.version import __version__

    arch_opt = dict(arch_opt)
    if 'type' not in arch_opt:
        raise ValueError(f'save_inference_checkpoint: arch_opt needs a "type" entry, got {arch_opt}')
    arch = {'type': arch_opt.pop('type'), 'kwargs': arch_opt}
    state = {k: v.detach().cpu() for k, v in state_dict.items()}
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    torch.save({param_key: state, 'arch': arch, 'version': __version__}, path)


def load_checkpoint(path: str, param_key: str = 'auto') -> tuple[dict, dict | None, str]:
    """Read a checkpoint on the CPU.

    Args:
        path: a BasicSR ``net_*.pth`` (``{'params': ..., 'params_ema': ...}``, optional ``'arch'``) or a bare state
            dict.
        param_key: ``'auto'`` (``params_ema`` when present, else ``params``), ``'params'``, ``'params_ema'`` or any
            other top-level key.

    Returns:
        ``(state_dict, arch_or_None, key_used)``; the ``module.`` prefix of (Distributed)DataParallel is removed.

    Raises:
        UsageError: file missing or unreadable, or the key absent (the message lists the keys present).
    """
    import torch

    if not osp.isfile(path):
        raise UsageError(f'--weights {path!r} does not exist')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # corrupt file, or a pickle with custom classes (refused by weights_only)
        raise UsageError(f'cannot read checkpoint {path!r}: {type(err).__name__}: {err}') from err
    if not isinstance(ckpt, dict) or not ckpt:
        raise UsageError(f'checkpoint {path!r} is not a state dict (got {type(ckpt).__name__})')
    arch = ckpt.get('arch') if isinstance(ckpt.get('arch'), dict) else None
    if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, used = ckpt, '(bare state dict)'
    else:
        if param_key == 'auto':
            used = 'params_ema' if isinstance(ckpt.get('params_ema'), dict) else 'params'
        else:
            used = param_key
        if not isinstance(ckpt.get(used), dict):
            present = [k for k, v in ckpt.items() if isinstance(v, dict) and k != 'arch']
            raise UsageError(f'checkpoint {path!r} has no {used!r} weights; keys holding weights: {present}')
        state = ckpt[used]
    state = {(k[len('module.') :] if k.startswith('module.') else k): v for k, v in state.items()}
    return state, arch, used


def _read_option_file(path: str) -> dict:
    import yaml

    if not osp.isfile(path):
        raise UsageError(f'-opt {path!r} does not exist')
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise UsageError(f'-opt {path!r} is not valid YAML: {err}') from err
    if not isinstance(opt, dict):
        raise UsageError(f'-opt {path!r} does not hold a BasicSR option mapping')
    return opt


def build_arch(arch_opt: dict, source: str) -> nn.Module:
    """Build a registered architecture from ``{'type': NAME, **kwargs}``; errors name ``source``.

    The classical operators of :mod:`llmhdr_basicsr.archs.itmo_baseline_arch` are built without importing BasicSR
    (several seconds of start-up); every other name is looked up in BasicSR's ``ARCH_REGISTRY``.
    """
    opt = dict(arch_opt)
    name = opt.pop('type', None)
    if not name:
        raise UsageError(f'{source}: the network block has no "type"')
    cls = _baseline_class(name)
    if cls is None:
        from basicsr.utils.registry import ARCH_REGISTRY

        if name not in ARCH_REGISTRY:
            raise UsageError(
                f'{source}: unknown architecture {name!r}; registered: {", ".join(sorted(ARCH_REGISTRY.keys()))}'
            )
        cls = ARCH_REGISTRY.get(name)
    try:
        return cls(**opt)
    except (TypeError, ValueError) as err:
        raise UsageError(f'{source}: cannot build {name} with {opt}: {err}') from err


def _baseline_class(name: str) -> type | None:
    """The classical iTMO class called ``name`` (``LinearizeITMO``, ``AkyuzITMO``, ...), or None."""
    from llmhdr_basicsr.archs import itmo_baseline_arch as itmo

    cls = getattr(itmo, name, None)
    is_operator = isinstance(cls, type) and issubclass(cls, itmo._ITMOBase) and cls is not itmo._ITMOBase
    return cls if is_operator else None


@dataclass
class LoadedNetwork:
    """A network ready for inference and where it came from (printed in the header)."""

    net: nn.Module
    arch_type: str
    source: str
    weights: str | None = None
    param_key: str | None = None
    arch_opt: dict = field(default_factory=dict)
    option_file: dict | None = None


def load_network(
    direction: str,
    weights: str | None = None,
    opt_path: str | None = None,
    arch: str | None = None,
    param_key: str = 'auto',
) -> LoadedNetwork:
    """Build the generator for ``direction`` and load its weights (see the module docstring for the rules).

    Args:
        direction: ``'ldr2hdr'`` (G_Y, ``network_g``) or ``'hdr2ldr'`` (G_X, ``network_g_hdr2ldr``).
        weights: checkpoint path, or None (option file's ``pretrain_network_*``; none for parameter-free archs).
        opt_path: BasicSR option file.
        arch: registered architecture name (built with default arguments).
        param_key: ``'auto'``, ``'params'``, ``'params_ema'`` (or another key).

    Returns:
        The :class:`LoadedNetwork` (network on the CPU, eval mode, float32).

    Raises:
        UsageError: anything that prevents building or loading, with the file or option named.
    """
    from llmhdr_basicsr.utils.weights import load_into

    if arch and opt_path:
        raise UsageError('pass either --arch or -opt, not both')
    key = NETWORK_KEYS[direction]
    option_file = None
    if arch:
        arch_opt, source = {'type': arch}, f'--arch {arch}'
    elif opt_path:
        option_file = _read_option_file(opt_path)
        if not isinstance(option_file.get(key), dict):
            have = [k for k in option_file if str(k).startswith('network_')]
            raise UsageError(f'-opt {opt_path!r} has no {key} block (needed for --direction {direction}); has {have}')
        arch_opt, source = dict(option_file[key]), f'{opt_path}:{key}'
        if weights is None:
            suffix = key[len('network_') :]
            weights = (option_file.get('path') or {}).get(f'pretrain_network_{suffix}')
            if param_key == 'auto' and (option_file.get('path') or {}).get(f'param_key_{suffix}'):
                param_key = option_file['path'][f'param_key_{suffix}']
    else:
        arch_opt = source = None
        if weights is None:  # nothing named: the model that ships with the package
            from llmhdr_basicsr.pretrained import bundled_checkpoint

            try:
                weights = bundled_checkpoint(direction)
            except FileNotFoundError as err:
                raise UsageError(str(err)) from err

    state = arch_ckpt = used = None
    if weights:
        state, arch_ckpt, used = load_checkpoint(str(weights), param_key)
    if arch_opt is None:
        if arch_ckpt is None:
            what = f'checkpoint {weights!r} does not record its architecture' if weights else 'no network given'
            raise UsageError(
                f'{what}; pass -opt <option file with {key}> (or --arch NAME for a parameter-free baseline)'
            )
        arch_opt = {'type': arch_ckpt.get('type'), **(arch_ckpt.get('kwargs') or {})}
        source = f'{weights} (arch entry)'
    net = build_arch(arch_opt, source)
    n_params = sum(p.numel() for p in net.parameters())
    if state is not None:
        try:
            load_into(net, state, str(weights), f'{arch_opt["type"]} from {source}')
        except ValueError as err:
            raise UsageError(str(err)) from err
    elif n_params:
        raise UsageError(
            f'{arch_opt["type"]} ({source}) has {n_params} parameters but no weights were given: pass --weights '
            '(or set path.pretrain_network_* in the option file)'
        )
    _check_direction(net, direction, arch_opt['type'], weights, arch_ckpt)
    if not hasattr(net, 'headroom') and arch_ckpt and 'headroom' in arch_ckpt:
        net.headroom = float(arch_ckpt['headroom'])  # an architecture without one learned the model's HDR domain
    return LoadedNetwork(net.eval().float(), arch_opt['type'], source, weights, used, arch_opt, option_file)


def _check_direction(
    net: nn.Module, direction: str, name: str, weights: str | None, ckpt_arch: dict | None = None
) -> None:
    """Refuse a network (or a checkpoint) of the other direction, with what to give instead.

    The checkpoint's own ``arch`` entry decides (its ``out_domain``); a checkpoint without one is judged by the
    BasicSR file name (``net_g_*.pth`` = G_Y, ``net_g_hdr2ldr_*.pth`` = G_X). Weights of G_Y load into G_X's
    architecture without complaint (same layers), so the file name is all there is then.
    """
    base = osp.basename(str(weights or ''))
    trained = (ckpt_arch or {}).get('kwargs', {}).get('out_domain') if ckpt_arch else None
    if weights and ckpt_arch is not None and trained is None and ckpt_arch.get('type') == 'FeedbackUNet':
        trained = 'hdr_mu'  # FeedbackUNet's default output domain
    if trained is None and weights:
        trained = 'ldr' if base.startswith('net_g_hdr2ldr') else ('hdr_mu' if base.startswith('net_g_') else None)
    if direction == 'hdr2ldr' and trained is not None and trained != 'ldr':
        raise UsageError(
            f'{weights} holds the LDR->HDR generator G_Y (out_domain {trained!r}); tone mapping needs the HDR->LDR '
            'generator G_X: give --weights experiments/<name>/models/net_g_hdr2ldr_<iter|latest>.pth (or '
            'llmhdr-infer for LDR->HDR)'
        )
    if direction == 'ldr2hdr' and trained == 'ldr':
        raise UsageError(
            f'{weights} holds the HDR->LDR generator G_X (out_domain ldr); LDR->HDR needs G_Y: give --weights '
            'experiments/<name>/models/net_g_<iter|latest>.pth (or llmhdr-tonemap / --direction hdr2ldr to tone-map)'
        )
    out_domain = getattr(net, 'out_domain', None)
    if direction == 'ldr2hdr' and out_domain not in (None, 'hdr_mu', 'linear'):
        raise UsageError(
            f'{name} has out_domain={out_domain!r}: it maps HDR to LDR. Use --direction hdr2ldr (llmhdr-tonemap), or '
            'the LDR->HDR generator (network_g, net_g_*.pth)'
        )
    if direction == 'hdr2ldr' and out_domain != 'ldr':
        raise UsageError(
            f'{name} has out_domain={out_domain!r}; --direction hdr2ldr needs the HDR->LDR generator '
            '(network_g_hdr2ldr with out_domain: ldr, checkpoint net_g_hdr2ldr_*.pth)'
        )


def _guidance_encoder(loaded: LoadedNetwork, clip_checkpoint: str | None, device: torch.device):
    """The frozen CLIP encoder of a generator built with ``guidance_dim > 0``, or None."""
    dim = int(getattr(loaded.net, 'guidance_dim', 0) or 0)
    if not dim:
        return None
    opt = loaded.option_file or {}
    block = (opt.get('val') or {}).get('clip_guidance') or (opt.get('train') or {}).get('clip_opt')
    if not block and not clip_checkpoint:
        raise UsageError(
            f'{loaded.arch_type} takes CLIP guidance (guidance_dim={dim}): give an option file with val.clip_guidance '
            '(type CLIPContrastiveLoss) or --clip-checkpoint with a local CLIP file'
        )
    from basicsr.losses import build_loss

    block = dict(block or {'type': 'CLIPContrastiveLoss'})
    if clip_checkpoint:
        block['checkpoint'] = clip_checkpoint
    block['allow_missing'] = False
    try:
        enc = build_loss(block).to(device).eval()
    except (FileNotFoundError, TypeError, ValueError) as err:
        raise UsageError(f'CLIP guidance encoder: {err}') from err
    if 2 * enc.embed_dim != dim:
        raise UsageError(f'guidance_dim={dim} needs a CLIP encoder with embed_dim {dim // 2}, got {enc.embed_dim}')
    return enc


# ------------------------------------------------------------------------------------------------- processing
class Reconstructor:
    """One network applied to one image at a time: read convention in, written convention out.

    Args:
        loaded: the network (:func:`load_network`).
        direction: ``'ldr2hdr'`` or ``'hdr2ldr'``.
        device: where it runs; the image stays on the CPU when tiling.
        dtype: float32 (default, None), or float16 on a GPU.
        tile: tile edge (0 = whole image in one call).
        overlap: tile overlap.
        global_size: the global-statistics pass sees at most ``global_size ** 2`` pixels (None = ``tile``; <= 0 =
            the full image).
        hdr_norm: luminance percentile mapped to 1 for HDR inputs (hdr2ldr), as in training.
        guidance_encoder: frozen CLIP encoder for generators with guidance, or None.
        progress: tqdm bar over tiles.
    """

    def __init__(
        self,
        loaded: LoadedNetwork,
        direction: str,
        device: torch.device,
        dtype: torch.dtype | None = None,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        global_size: int | None = None,
        hdr_norm: float | None = 99.5,
        guidance_encoder=None,
        progress: bool = False,
    ) -> None:
        import torch

        from llmhdr_basicsr.utils.tiling import GlobalStatsTiler

        dtype = torch.float32 if dtype is None else dtype
        self.loaded, self.direction, self.device, self.dtype = loaded, direction, device, dtype
        self.net = loaded.net.to(device=device, dtype=dtype)
        self.headroom = float(getattr(self.net, 'headroom', 0.0) or 0.0)
        self.out_domain = getattr(self.net, 'out_domain', 'hdr_mu' if direction == 'ldr2hdr' else 'ldr')
        self.hdr_norm = hdr_norm
        self.guidance_encoder = guidance_encoder
        self.parameter_free = not any(True for _ in self.net.parameters())
        self.tile = 0 if self.parameter_free else int(tile)
        self.tiler = None
        if self.tile > 0:
            self.tiler = GlobalStatsTiler(self.net, self.tile, overlap, global_size, device, dtype, progress=progress)

    def describe(self) -> str:
        if self.tiler is None:
            why = ' (parameter-free operator: image-wide statistics, run untiled)' if self.parameter_free else ''
            return f'whole image in one call{why}'
        g = self.tiler.global_size
        glob = 'full image' if g <= 0 else f'a copy of <= {g}x{g} px'
        return (
            f'tile {self.tiler.tile} px, overlap {self.tiler.overlap} px, global instance-norm statistics from {glob}'
        )

    # conversions between file values and the network's domains (shared with CycleHDRModel.to_linear / to_model_hdr)
    def _to_linear(self, y: torch.Tensor) -> torch.Tensor:
        from llmhdr_basicsr.utils.tonemap import model_to_hdr

        if self.out_domain == 'linear':
            return y.clamp(min=0)
        return model_to_hdr(y, self.headroom)

    def _guidance(self, x: torch.Tensor):
        import torch

        from llmhdr_basicsr.utils.tiling import downscale_to_area

        enc = self.guidance_encoder
        if enc is None:
            return None
        small = downscale_to_area(x, 1024 * 1024)  # CLIP resizes to 224 anyway: never the full image to the device
        with torch.no_grad():
            e_in = enc.embed(small.to(self.device)).to(self.dtype)

        def guidance(prev):
            with torch.no_grad():
                e_out = e_in if prev is None else enc.embed(prev.float()).to(self.dtype)
            return torch.cat([e_in, e_out], dim=1)

        return guidance

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """Process one image.

        Args:
            img: ``(H, W, 3)`` float32: display-referred LDR in [0, 1] (ldr2hdr) or linear HDR, relative (hdr2ldr).

        Returns:
            ``(H, W, 3)`` float32: linear HDR, relative scale (1 = normalisation white), or display-referred LDR.
        """
        import torch

        from llmhdr_basicsr.utils.tonemap import hdr_to_model

        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
        if self.direction == 'hdr2ldr':
            from llmhdr_basicsr.data.hdr_transforms import normalize_hdr_np

            normalised, _ = normalize_hdr_np(img, self.hdr_norm)
            x = hdr_to_model(torch.from_numpy(normalised).permute(2, 0, 1)[None], self.headroom)
        guidance = self._guidance(x)
        if self.tiler is not None:
            y = self.tiler(x, guidance=guidance)
        else:
            with torch.no_grad():
                kwargs = {'guidance': guidance} if guidance is not None else {}
                y = self.net(x.to(device=self.device, dtype=self.dtype), **kwargs)
                y = (y[-1] if isinstance(y, (list, tuple)) else y).float().cpu()
        if self.direction == 'ldr2hdr':
            y = self._to_linear(y)
        else:
            y = y.clamp(0.0, 1.0)
        return y[0].permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------------------------- file loop
def collect_inputs(path: str, direction: str) -> list[str]:
    """One file, or the images of a folder whose extension fits the direction (LDR formats / HDR formats)."""
    if osp.isfile(path):
        return [path]
    if osp.isdir(path):
        exts = LDR_EXTENSIONS if direction == 'ldr2hdr' else HDR_EXTENSIONS + FLOAT_CAPABLE_EXTENSIONS
        files = list_images(path, tuple(exts))
        if not files:
            raise UsageError(f'-i {path!r}: no {"LDR" if direction == "ldr2hdr" else "HDR"} images ({", ".join(exts)})')
        return files
    raise UsageError(f'-i {path!r} does not exist')


def output_stems(paths: Sequence[str], out_dir: str, suffix: str) -> dict[str, str]:
    """``input path -> <out_dir>/<stem><suffix>``; inputs sharing a stem get ``_<ext>`` appended (no overwrites)."""
    stems = [osp.splitext(osp.basename(p))[0] for p in paths]
    out = {}
    for p, s in zip(paths, stems):
        if stems.count(s) > 1:
            s = f'{s}_{osp.splitext(p)[1].lstrip(".").lower()}'
        out[p] = osp.join(out_dir, s + suffix)
    return out


@dataclass
class RunSummary:
    """What happened to each input."""

    written: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def process_files(
    paths: Sequence[str],
    out_dir: str,
    suffix: str,
    handle: Callable[[str, str], list[str]],
    quiet: bool = False,
) -> RunSummary:
    """Run ``handle(input_path, output_stem) -> written files`` over ``paths`` with a progress bar.

    Unreadable or unsuitable files (``SkipImage``, ``OSError`` incl. :class:`ImageReadError`, ``ValueError``,
    ``RuntimeError`` such as out-of-memory) are skipped with a warning and collected in the summary.
    """
    from tqdm import tqdm

    summary = RunSummary()
    stems = output_stems(paths, out_dir, suffix)
    t0 = time.time()
    bar = tqdm(paths, unit='image', disable=quiet or len(paths) < 2, file=sys.stderr)
    for path in bar:
        bar.set_description(osp.basename(path))
        try:
            written = handle(path, stems[path])
        except (SkipImage, OSError, ValueError, RuntimeError) as err:
            reason = str(err) if isinstance(err, (SkipImage, ImageReadError)) else f'{type(err).__name__}: {err}'
            summary.failed.append((path, reason))
            msg = f'WARNING: skipped {path}: {reason}'
            tqdm.write(msg, file=sys.stderr)
            continue
        summary.written.extend(written)
    summary.seconds = time.time() - t0
    return summary


def report(summary: RunSummary, n_inputs: int, out_dir: str) -> int:
    """Print the end-of-run summary; return the exit status (0 when every input was written, 1 when any was skipped).

    A batch job must notice a skipped file, as with ``cp`` or ``convert``: the skipped ones are listed by name.
    """
    n_ok = n_inputs - len(summary.failed)
    per = f', {summary.seconds / max(n_ok, 1):.2f} s/image' if n_ok else ''
    print(f'Done: {n_ok} of {n_inputs} image(s) written to {out_dir}{per}.')
    if summary.failed:
        print(f'Skipped {len(summary.failed)} file(s):')
        for path, reason in summary.failed:
            print(f'  {path}: {reason}')
        return 1
    return 0


def check_not_input(out_path: str, in_path: str) -> None:
    """Refuse to write over the input file (``-o`` = input folder with an empty ``--suffix``)."""
    if osp.abspath(out_path) == osp.abspath(in_path):
        raise SkipImage(f'the output {out_path} would overwrite the input; choose another -o or --suffix')


# ---------------------------------------------------------------------------------------------------- CLI
def build_parser(prog: str = 'llmhdr-infer', tonemap: bool = False) -> argparse.ArgumentParser:
    """The argument parser of ``llmhdr-infer`` (``tonemap=True``: ``llmhdr-tonemap``, direction fixed to hdr2ldr)."""
    if tonemap:
        desc = 'Tone-map HDR images with the trained HDR->LDR generator G_X (or a classical operator).'
    else:
        desc = 'Reconstruct linear HDR from LDR images with an LLM-HDR / CycleHDR generator (or a classical iTMO).'
    p = argparse.ArgumentParser(prog=prog, description=desc, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('-i', '--input', required=True, help='image file or folder')
    p.add_argument('-o', '--output', default='results', help='output folder (created)')
    net = p.add_argument_group('network')
    net.add_argument(
        '--weights',
        help='checkpoint (BasicSR net_g_*.pth / net_g_hdr2ldr_*.pth); without --weights, -opt and --arch: the model '
        'that ships with the package (options/llmhdr_cpu.yml on the example data)',
    )
    net.add_argument('-opt', '--opt', dest='opt', help='BasicSR option file whose network_g[_hdr2ldr] block builds it')
    net.add_argument('--arch', help='registered architecture name built with its defaults (e.g. MasiaITMO)')
    net.add_argument('--param-key', default='auto', help='auto (params_ema if present, else params), params, ...')
    net.add_argument('--clip-checkpoint', help='local CLIP weights for generators with guidance (guidance_dim > 0)')
    if not tonemap:
        net.add_argument('--direction', choices=DIRECTIONS, default='ldr2hdr', help='ldr2hdr (G_Y) or hdr2ldr (G_X)')
    run = p.add_argument_group('running')
    run.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N')
    run.add_argument('--half', action='store_true', help='float16 (GPU only; fp32 is the default)')
    run.add_argument('--tile', type=int, default=DEFAULT_TILE, help='tile edge in pixels; 0 = whole image at once')
    run.add_argument('--tile-overlap', type=int, default=DEFAULT_OVERLAP, help='overlap between tiles in pixels')
    run.add_argument(
        '--tile-global-size',
        type=int,
        default=None,
        help='global instance-norm statistics from a copy of at most this squared pixels (default: --tile; 0 = the '
        'full image, exact but as much memory as no tiling)',
    )
    run.add_argument('--quiet', action='store_true', help='no progress bars')
    out = p.add_argument_group('output')
    out.add_argument('--suffix', default='', help='appended to every output stem, e.g. _CycleHDR')
    if not tonemap:
        out.add_argument('--ext', default=None, help='exr (default), hdr or pfm for HDR; png (default) or tif for LDR')
        out.add_argument(
            '--scale',
            choices=('relative', 'absolute'),
            default='relative',
            help='relative: 1 = normalisation white; absolute: cd/m2 with --percentile at --peak-nits',
        )
        out.add_argument('--peak-nits', type=float, default=1000.0, help='cd/m2 of the --percentile luminance')
        out.add_argument('--percentile', type=float, default=99.9, help='luminance percentile set to --peak-nits')
        out.add_argument(
            '--preview',
            choices=(*PREVIEW_OPERATORS, 'none'),
            default='reinhard',
            help='tone-mapped 8-bit PNG written next to each HDR output',
        )
        out.add_argument('--stops', type=float, default=0.0, help='exposure shift of the preview in stops')
    else:
        out.add_argument('--ext', default='png', choices=LDR_OUT_EXTS, help='output format')
    out.add_argument('--bit-depth', type=int, choices=(8, 16), default=8, help='LDR output bit depth (hdr2ldr)')
    out.add_argument(
        '--hdr-norm',
        type=float,
        default=99.5,
        help='HDR inputs: luminance percentile mapped to 1 before the network, as in training',
    )
    return p


def _validate(args: argparse.Namespace) -> None:
    if args.tile < 0 or args.tile_overlap < 0:
        raise UsageError('--tile and --tile-overlap must be >= 0')
    if args.tile and args.tile < 16:
        raise UsageError(f'--tile {args.tile} is too small (use >= 16, or 0 for no tiling)')
    if args.tile and 2 * args.tile_overlap > args.tile:
        raise UsageError(f'--tile-overlap {args.tile_overlap} must be at most half of --tile {args.tile}')
    if not 0 < args.hdr_norm <= 100:
        raise UsageError(f'--hdr-norm must be a percentile in (0, 100], got {args.hdr_norm}')
    if args.direction == 'ldr2hdr':
        args.ext = (args.ext or 'exr').lower().lstrip('.')
        if args.ext not in HDR_OUT_EXTS:
            raise UsageError(f'--ext {args.ext!r}: HDR output must be one of {HDR_OUT_EXTS}')
        if args.peak_nits <= 0 or not 0 < args.percentile <= 100:
            raise UsageError('--peak-nits must be > 0 and --percentile in (0, 100]')
    else:
        args.ext = (args.ext or 'png').lower().lstrip('.')
        if args.ext not in LDR_OUT_EXTS:
            raise UsageError(f'--ext {args.ext!r}: LDR output must be one of {LDR_OUT_EXTS}')


def make_handler(args: argparse.Namespace, rec: Reconstructor) -> Callable[[str, str], list[str]]:
    """The per-file function of :func:`process_files` for a network run."""
    import torch

    from llmhdr_basicsr.utils.tonemap import tonemap_preview

    def handle(path: str, stem: str) -> list[str]:
        img, is_hdr = read_image(path)
        if args.direction == 'ldr2hdr':
            if is_hdr:
                raise SkipImage('is a float HDR image; LDR->HDR needs 8/16-bit LDR input (tone-map it with '
                                '--direction hdr2ldr / llmhdr-tonemap)')  # fmt: skip
            target = f'{stem}.{args.ext}'
            check_not_input(target, path)
            hdr = rec(img)
            if args.scale == 'absolute':
                import llmhdr_basicsr.plugin  # noqa: F401  (basicsr before hdr_metric, which imports it)
                from llmhdr_basicsr.metrics.hdr_metric import absolute_scale

                hdr = hdr * np.float32(absolute_scale(hdr, args.peak_nits, args.percentile))
            write_hdr(target, hdr)
            written = [target]
            if args.preview != 'none':
                preview = tonemap_preview(torch.from_numpy(hdr).permute(2, 0, 1)[None], args.preview, args.stops)
                ptarget = f'{stem}_{args.preview}.png'
                check_not_input(ptarget, path)
                write_ldr(ptarget, preview[0].permute(1, 2, 0).numpy())
                written.append(ptarget)
            return written
        if not is_hdr:
            raise SkipImage('is an 8/16-bit LDR image; HDR->LDR needs float HDR input (.hdr, .exr, .pfm, float .tif)')
        target = f'{stem}.{args.ext}'
        check_not_input(target, path)
        write_ldr(target, rec(img), bit_depth=args.bit_depth)
        return [target]

    return handle


def print_header(lines: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f'{k:<{width}} : {v}')


def run(args: argparse.Namespace) -> int:
    """Run ``llmhdr-infer`` with parsed arguments; returns the exit status (raises :class:`UsageError`)."""
    from llmhdr_basicsr.utils.device import check_half, select_device

    _validate(args)
    device = select_device(args.device)
    dtype = check_half(device, args.half)
    inputs = collect_inputs(args.input, args.direction)
    loaded = load_network(args.direction, args.weights, args.opt, args.arch, args.param_key)
    enc = _guidance_encoder(loaded, args.clip_checkpoint, device)
    rec = Reconstructor(loaded, args.direction, device, dtype, args.tile, args.tile_overlap, args.tile_global_size,
                        args.hdr_norm, enc, progress=not args.quiet and len(inputs) == 1)  # fmt: skip
    header = [
        ('direction', args.direction),
        ('network', f'{loaded.arch_type} from {loaded.source}'),
        ('weights', f'{loaded.weights} [{loaded.param_key}]' if loaded.weights else 'none (parameter-free)'),
        ('device', f'{device}, {str(dtype).replace("torch.", "")}'),
        ('tiling', rec.describe()),
    ]
    if args.direction == 'ldr2hdr':
        if args.scale == 'absolute':
            scale = f'absolute: {args.percentile}th luminance percentile = {args.peak_nits:g} cd/m2'
        else:
            scale = f'relative: 1.0 = normalisation white (headroom {rec.headroom:g} stops)'
        header += [('output', f'linear Rec.709 .{args.ext}, {scale}'), ('preview', args.preview)]
    else:
        header += [('input norm', f'{args.hdr_norm}th luminance percentile -> 1'),
                   ('output', f'sRGB {args.bit_depth}-bit .{args.ext}')]  # fmt: skip
    header.append(('inputs', f'{len(inputs)} file(s) from {args.input}'))
    print_header(header)
    os.makedirs(args.output, exist_ok=True)
    summary = process_files(inputs, args.output, args.suffix, make_handler(args, rec), args.quiet)
    return report(summary, len(inputs), args.output)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``llmhdr-infer``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
    try:
        return run(args)
    except UsageError as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2
    except ValueError as err:  # select_device / check_half messages
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
