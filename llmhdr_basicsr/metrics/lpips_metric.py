"""LPIPS (Zhang et al. 2018) as a BasicSR metric, with the backbone loaded from a local torchvision checkpoint.

The ``lpips`` wheel ships only the linear heads (``lpips/weights/v0.1/{alex,vgg,squeeze}.pth``); the ImageNet
backbone would be downloaded by torchvision, and nothing is downloaded at run time. Here the network is built with a
random backbone (``pnet_rand=True``) plus the shipped heads, and the backbone weights are then copied from a
local torchvision checkpoint: ``weights`` option > ``LLMHDR_LPIPS_BACKBONE`` > a clear FileNotFoundError.

HDR protocol (common practice; the paper states none): the steps of :mod:`llmhdr_basicsr.metrics.hdr_metric`
(validation, crop, scale alignment), then both images divided by the ground truth's maximum, clipped to [0, 1],
mu-law compressed (mu = 5000, the PSNR-mu domain) and scaled to [-1, 1]; AlexNet LPIPS by default.
"""

from __future__ import annotations

import warnings
from typing import Any

import lpips
import numpy as np
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from llmhdr_basicsr.metrics.hdr_metric import DEFAULT_ALIGN, prepare_pairs
from llmhdr_basicsr.utils.tonemap import mu_law_np
from llmhdr_basicsr.utils.weights import load_into, load_state_dict_file, resolve_weights

LPIPS_ENV_VAR = 'LLMHDR_LPIPS_BACKBONE'
LPIPS_NETS = ('alex', 'vgg', 'squeeze')
#: torchvision ImageNet checkpoints that fit each LPIPS trunk (file names as torchvision publishes them).
LPIPS_BACKBONE_FILES = {
    'alex': 'alexnet-owt-7be5be79.pth',
    'vgg': 'vgg16-397923af.pth',
    'squeeze': 'squeezenet1_1-b8a52dc0.pth',
}

_LPIPS_CACHE: dict[tuple[str, str, str], lpips.LPIPS] = {}


def lpips_weights_hint(option: str) -> str:
    """The 'what to set where' part of the missing-backbone message."""
    files = ', '.join(f'{name} for {net!r}' for net, name in LPIPS_BACKBONE_FILES.items())
    return f'set {option} or {LPIPS_ENV_VAR} to a local torchvision ImageNet checkpoint of the backbone ({files})'


def build_lpips(
    net: str = 'alex', weights: str | None = None, option: str = 'the metric option weights'
) -> lpips.LPIPS:
    """Build a frozen LPIPS network with the shipped linear heads and the backbone from a local file.

    Args:
        net: LPIPS trunk, ``'alex'`` | ``'vgg'`` | ``'squeeze'``.
        weights: torchvision checkpoint of that trunk (``features.*`` keys, e.g. ``alexnet-owt-7be5be79.pth``; a
            state dict of the LPIPS trunk itself, ``slice*.*`` keys, works too). None: ``$LLMHDR_LPIPS_BACKBONE``.
        option: name of the YAML option that sets ``weights``, for the error message.

    Returns:
        ``lpips.LPIPS`` in eval mode on the CPU, every parameter with ``requires_grad=False``.

    Raises:
        ValueError: unknown ``net``, or a checkpoint that does not fit the trunk (names both).
        FileNotFoundError: no weights configured, or the file does not exist (names the option and the variable).
    """
    if net not in LPIPS_NETS:
        raise ValueError(f'LPIPS: unknown net {net!r}; use one of {LPIPS_NETS}')
    path = resolve_weights(
        weights, LPIPS_ENV_VAR, f'LPIPS backbone weights for net={net!r}', lpips_weights_hint(option)
    )
    with warnings.catch_warnings():  # torchvision's deprecation notice for pretrained=False
        warnings.simplefilter('ignore')
        model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    state = load_state_dict_file(path)
    trunk = model.net
    if not any(k.startswith('slice') for k in state):  # torchvision layout: features.<i>.* -> slice<k>.<i>.*
        mapped = {}
        for key in trunk.state_dict():
            _, index, rest = key.split('.', 2)
            mapped[key] = state.get(f'features.{index}.{rest}')
        missing = [k for k, v in mapped.items() if v is None]
        if missing or not state:
            raise ValueError(
                f'checkpoint {path!r} does not fit the LPIPS {net!r} backbone: no torchvision features.* weights for '
                f'{len(missing)} of {len(mapped)} trunk tensors (e.g. features.{missing[0].split(".", 1)[1]}); '
                f'expected a file like {LPIPS_BACKBONE_FILES[net]}'
            )
        state = mapped
    load_into(trunk, state, path, f'the LPIPS {net!r} backbone (torchvision {LPIPS_BACKBONE_FILES[net]})')
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def get_lpips(
    net: str = 'alex',
    weights: str | None = None,
    device: str | torch.device = 'cpu',
    option: str = 'val.metrics.<name>.weights',
) -> lpips.LPIPS:
    """Cached :func:`build_lpips`: one frozen network per (net, resolved weight file, device)."""
    path = resolve_weights(
        weights, LPIPS_ENV_VAR, f'LPIPS backbone weights for net={net!r}', lpips_weights_hint(option)
    )
    key = (net, path, str(torch.device(device)))
    if key not in _LPIPS_CACHE:
        _LPIPS_CACHE[key] = build_lpips(net, path, option).to(device)
    return _LPIPS_CACHE[key]


def _ldr_pairs(img: Any, img2: Any, crop_border: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Display-referred ``(H, W, 3)`` / ``(N, H, W, 3)`` pairs (float in [0, 1] or uint8) -> float64 [0, 1] pairs."""
    pair = []
    for name, x in (('prediction (img)', img), ('reference (img2)', img2)):
        arr = np.asarray(x)
        arr = arr / 255.0 if arr.dtype == np.uint8 else np.clip(arr.astype(np.float64), 0.0, 1.0)
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f'calculate_lpips: {name} must be (H, W, 3) or (N, H, W, 3) RGB, got {np.shape(x)}')
        pair.append(arr)
    if pair[0].shape != pair[1].shape:
        raise ValueError(f'calculate_lpips: shapes differ: img {np.shape(img)} vs img2 {np.shape(img2)}')
    if crop_border < 0 or 2 * crop_border >= min(pair[0].shape[1:3]):
        raise ValueError(f'calculate_lpips: crop_border={crop_border} is invalid for size {pair[0].shape[1:3]}')
    if crop_border:
        pair = [a[:, crop_border:-crop_border, crop_border:-crop_border] for a in pair]
    return list(zip(*pair))


@METRIC_REGISTRY.register()
def calculate_lpips(
    img: Any,
    img2: Any,
    net: str = 'alex',
    weights: str | None = None,
    domain: str = 'hdr',
    align: str = DEFAULT_ALIGN,
    crop_border: int = 0,
    device: str | None = None,
    **kwargs: Any,
) -> float:
    """LPIPS distance (lower is better) between a prediction and its reference.

    BasicSR metric convention ``f(img, img2, **opt)``; YAML: ``val.metrics.lpips: {type: calculate_lpips, net: alex,
    weights: /path/alexnet-owt-7be5be79.pth, better: lower}`` (``better: lower`` so that BasicSR tracks the best
    checkpoint the right way round).

    ``domain='hdr'`` follows the protocol of :mod:`llmhdr_basicsr.metrics.hdr_metric` (validation, sanitising,
    ``crop_border``, scale alignment :func:`~llmhdr_basicsr.metrics.hdr_metric.align_scale`), then the PSNR-mu
    domain: both images divided by the ground truth's maximum, clipped to [0, 1], mu-law (mu = 5000), and scaled to
    [-1, 1] for LPIPS. ``domain='ldr'`` compares display-referred images as they are (the HDR->LDR
    tone-mapping evaluation).

    Args:
        img: prediction, RGB. ``'hdr'``: linear HDR, relative scale, numpy ``(H, W, 3)`` / ``(N, H, W, 3)`` float or
            torch ``(3, H, W)`` / ``(N, 3, H, W)``. ``'ldr'``: display-referred numpy, float in [0, 1] or uint8.
        img2: reference (ground truth), same conventions and shape.
        net: LPIPS trunk, ``'alex'`` (default, the usual choice for reporting) | ``'vgg'`` | ``'squeeze'``.
        weights: local torchvision checkpoint of the trunk; None: ``$LLMHDR_LPIPS_BACKBONE``.
        domain: ``'hdr'`` or ``'ldr'`` (see above).
        align: scale alignment of the HDR prediction (``'geomean'`` | ``'median'`` | ``'max'`` | ``'none'``); unused
            for ``'ldr'``.
        crop_border: pixels cut from every side before comparing.
        device: torch device; None: CUDA when available, else CPU.
        **kwargs: BasicSR's bookkeeping key ``better`` is accepted; anything else raises TypeError.

    Returns:
        Mean LPIPS over the batch as a Python float (0 for identical images).
    """
    unknown = sorted(k for k in kwargs if k != 'better')
    if unknown:
        raise TypeError(f'calculate_lpips: unknown option(s) {unknown} (check the val.metrics block of the YAML)')
    if domain == 'hdr':
        pairs = []
        for pred, gt in prepare_pairs(img, img2, align, crop_border):
            peak = float(gt.max()) or 1.0
            pairs.append((mu_law_np(np.clip(pred / peak, 0.0, 1.0)), mu_law_np(np.clip(gt / peak, 0.0, 1.0))))
    elif domain == 'ldr':
        pairs = _ldr_pairs(img, img2, crop_border)
    else:
        raise ValueError(f"calculate_lpips: domain must be 'hdr' or 'ldr', got {domain!r}")
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    model = get_lpips(net, weights, device)
    scores = []
    with torch.no_grad():
        for a, b in pairs:
            ta, tb = (
                torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).float()[None].to(device) for x in (a, b)
            )
            scores.append(float(model(ta * 2 - 1, tb * 2 - 1).item()))
    return float(np.mean(scores))
