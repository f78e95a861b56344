"""Heuristic perception maps: where an image shows artifacts, over- and under-exposure.

This is the ``heuristic`` backend of the perception interface. LLM-HDR v2/v3 asked a VLM for three saliency maps of
the generator output (artifacts, over-exposure, under-exposure); CycleHDR (v4) replaced the VLM by
heuristics with the same maps and the same headline numbers (``docs/method.md``). Every backend returns a
:class:`PerceptionMaps`; a VLM-cache backend only has to fill the same three ``(N, 1, H, W)`` fields.

Two judgements share the :class:`PerceptionMaps` interface:

- :func:`reconstruction_maps` judges an **HDR reconstruction against its LDR input**, as rendered for display at the
  input's exposure (the generator LDR->HDR, its feedback gating and the perception loss of that direction; formulas
  in its docstring, design notes in the repository's ``docs/method.md``): over-exposure = highlights clipped in the
  input that the reconstruction left at white, under-exposure = dark shadows it left at black, artifacts =
  checkerboard patterns and contrast outside the clipped regions that the input does not have. Its optimum is a
  plausible HDR image: the ground truth scores better than the linearised input, and the linearised input gets a
  gradient wherever it has clipped or dark pixels.
- :func:`heuristic_maps` judges a **display-referred image** on its own (an LDR photo, or the LDR output of the
  generator HDR->LDR): over/under = saturated and crushed display values, artifacts = detail the reference lacks.

Input convention of :func:`heuristic_maps`: ``img`` is ``(N, 3, H, W)`` **display-referred** RGB in [0, 1] — an
sRGB LDR image, or an HDR image
after mu-law compression ``T(H)``. ``reference``, when given, must use the *same* display encoding
(e.g. the generator input mapped to the output domain by
:func:`llmhdr_basicsr.archs.feedback_unet_arch.output_domain_base`), otherwise tone-curve differences read as
artifacts.

Formulas (``Y`` = Rec.709 luma of the display-referred values, or the channel maximum with ``channel_reduce='max'``)

- over-exposure (SingleHDR(W) well-exposedness mask, ``tau`` = 0.95)::

      M_ox = clip((Y - tau) / (1 - tau), 0, 1)

- under-exposure::

      M_ux = clip((1 - tau - Y) / (1 - tau), 0, 1)

- artifacts (the paper gives no recipe; chosen here: local detail of the image that the reference does not
  have). With ``D(I)`` the local RMS contrast of RGB in a ``w x w`` window (``w`` = ``artifact_window``)::

      D(I) = sqrt(mean_c(avg_w(I_c^2) - avg_w(I_c)^2) + eps) - sqrt(eps)

  with a reference::

      M_af = 1 - exp(-relu(D(img) - D(ref) - margin) / scale)

  i.e. texture, blobs, ringing or colour speckle that appear in the output but not in the input (the blob artifacts
  of SingleHDR(W) in saturated regions, ``assets/artifacts.png``, are exactly detail where the input is flat);
  without a reference (e.g. the input itself at feedback step 0)::

      M_af = (1 - exp(-relu(D(img) - margin) / scale)) * clip((avg_w(Y) - sat_tau) / (1 - sat_tau), 0, 1)

  i.e. local-variance blobs inside bright (near-saturated) regions only.

Differentiability: all three maps are built from element-wise arithmetic, average pooling, ``sqrt`` (kept away from 0
by ``eps``), ``exp`` and piecewise-linear clips. The clips are deliberately the *hard* ones of the paper's formula so
that a clean image gives maps that are exactly 0 (a soft clip would leave a small positive floor everywhere and bias
the pixel fractions of the loss). The cost is that the gradient is zero where a map is saturated at 0 (nothing to
penalise there) or, for ``relu``, below the margin; inside the ramp (``tau < Y < 1`` for ``M_ox``, etc.) the gradient
is the slope ``1 / (1 - tau)``. ``M_af`` never reaches 1 (``1 - exp(-x)``), so it always passes a gradient where it
is positive. Display-referred inputs never exceed 1, so ``M_ox`` is never stuck at 1 for a sigmoid output.

Cost: a handful of element-wise ops and three ``w x w`` average pools at full resolution, no parameters; batched,
deterministic, on the input's device and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from llmhdr_basicsr.utils.tonemap import luminance, srgb_decode, srgb_encode

#: Channel order of :meth:`PerceptionMaps.stack` and of external ``maps`` tensors.
MAP_NAMES = ('artifact', 'over', 'under')

#: Allowed values of ``channel_reduce``.
CHANNEL_REDUCE = ('luma', 'max')


class PerceptionFractions(NamedTuple):
    """Per-image pixel fractions (soft counts / total pixels) of the three maps; each ``(N,)``, in [0, 1]."""

    artifact: torch.Tensor
    over: torch.Tensor
    under: torch.Tensor

    def total(self) -> torch.Tensor:
        """``(N,)`` sum of the three fractions: the natural reading of L_llm = (N_af + N_ox + N_ux) / N_total."""
        return self.artifact + self.over + self.under


@dataclass(frozen=True)
class PerceptionMaps:
    """The three perception maps of one batch, independent of the backend that produced them.

    Attributes:
        artifact: ``(N, 1, H, W)`` in [0, 1], likelihood/strength of synthesis artifacts (LLM_af).
        over: ``(N, 1, H, W)`` in [0, 1], over-exposure (LLM_ox).
        under: ``(N, 1, H, W)`` in [0, 1], under-exposure (LLM_ux).

    All three share shape, dtype and device. They are plain tensors: differentiable when the backend is.
    """

    artifact: torch.Tensor
    over: torch.Tensor
    under: torch.Tensor

    def __post_init__(self) -> None:
        shapes = {name: tuple(getattr(self, name).shape) for name in MAP_NAMES}
        first = shapes['artifact']
        if len(first) != 4 or first[1] != 1 or any(s != first for s in shapes.values()):
            raise ValueError(f'PerceptionMaps: each map must be (N, 1, H, W) and all shapes equal, got {shapes}')

    def stack(self) -> torch.Tensor:
        """``(N, 3, H, W)`` with channels in the order of :data:`MAP_NAMES` (artifact, over, under)."""
        return torch.cat([self.artifact, self.over, self.under], dim=1)

    @classmethod
    def from_stack(cls, maps: torch.Tensor) -> PerceptionMaps:
        """Inverse of :meth:`stack`: ``(N, 3, H, W)`` [artifact, over, under] in [0, 1] -> :class:`PerceptionMaps`."""
        if maps.dim() != 4 or maps.size(1) != 3:
            raise ValueError(
                f'PerceptionMaps.from_stack: expected (N, 3, H, W) maps ordered {MAP_NAMES}, got {tuple(maps.shape)}'
            )
        artifact, over, under = maps.split(1, dim=1)
        return cls(artifact=artifact, over=over, under=under)

    def fractions(self) -> PerceptionFractions:
        """Soft pixel fractions per image (the mean of each map over H, W): ``(N,)`` each, in [0, 1]."""
        return PerceptionFractions(*(getattr(self, name).mean(dim=(1, 2, 3)) for name in MAP_NAMES))

    def detach(self) -> PerceptionMaps:
        """The same maps cut from the autograd graph."""
        return PerceptionMaps(self.artifact.detach(), self.over.detach(), self.under.detach())


def _check_image(img: torch.Tensor, name: str) -> None:
    if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.size(1) != 3:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(
            f'heuristic perception: {name} must be a (N, 3, H, W) display-referred RGB tensor, got {shape}'
        )
    if not img.is_floating_point():
        raise TypeError(f'heuristic perception: {name} must be a float tensor in [0, 1], got {img.dtype}')


def exposure_signal(img: torch.Tensor, channel_reduce: str = 'luma') -> torch.Tensor:
    """The per-pixel brightness the exposure maps threshold.

    Args:
        img: ``(N, 3, H, W)`` display-referred RGB in [0, 1].
        channel_reduce: ``'luma'`` (Rec.709 weights on the display-referred values, the SingleHDR(W) reading) or
            ``'max'`` (max over R, G, B: also flags single-channel clipping such as a saturated red sky).

    Returns:
        ``(N, 1, H, W)`` in [0, 1] (display-referred).
    """
    if channel_reduce == 'luma':
        return luminance(img)
    if channel_reduce == 'max':
        return img.amax(dim=1, keepdim=True)
    raise ValueError(f'heuristic perception: channel_reduce must be one of {CHANNEL_REDUCE}, got {channel_reduce!r}')


def _check_tau(tau: float) -> None:
    if not 0.0 < float(tau) < 1.0:
        raise ValueError(f'heuristic perception: tau must lie in (0, 1), got {tau}')


def over_exposure_map(img: torch.Tensor, tau: float = 0.95, channel_reduce: str = 'luma') -> torch.Tensor:
    """``M_ox = clip((Y - tau) / (1 - tau), 0, 1)`` (SingleHDR(W) well-exposedness).

    Args:
        img: ``(N, 3, H, W)`` display-referred RGB in [0, 1].
        tau: threshold; ``Y >= 1`` gives 1, ``Y <= tau`` gives 0.
        channel_reduce: see :func:`exposure_signal`.

    Returns:
        ``(N, 1, H, W)`` in [0, 1]; gradient ``1 / (1 - tau)`` inside the ramp, 0 outside.
    """
    _check_tau(tau)
    y = exposure_signal(img, channel_reduce)
    return ((y - tau) / (1.0 - tau)).clamp(0.0, 1.0)


def under_exposure_map(img: torch.Tensor, tau: float = 0.95, channel_reduce: str = 'luma') -> torch.Tensor:
    """``M_ux = clip((1 - tau - Y) / (1 - tau), 0, 1)`` (the dark end of the same mask).

    Args:
        img: ``(N, 3, H, W)`` display-referred RGB in [0, 1].
        tau: threshold; ``Y <= 0`` gives 1, ``Y >= 1 - tau`` gives 0.
        channel_reduce: see :func:`exposure_signal`.

    Returns:
        ``(N, 1, H, W)`` in [0, 1]; gradient ``-1 / (1 - tau)`` inside the ramp, 0 outside.
    """
    _check_tau(tau)
    y = exposure_signal(img, channel_reduce)
    return ((1.0 - tau - y) / (1.0 - tau)).clamp(0.0, 1.0)


def _box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """``window x window`` mean with replicate borders, as two depthwise 1-D convolutions (on the CPU 2.5x faster
    than a stride-1 ``avg_pool2d``)."""
    r, c = window // 2, x.size(1)
    kernel = x.new_full((c, 1, 1, window), 1.0 / window)
    rows = F.conv2d(F.pad(x, (r, r, 0, 0), mode='replicate'), kernel, groups=c)
    return F.conv2d(F.pad(rows, (0, 0, r, r), mode='replicate'), kernel.transpose(2, 3), groups=c)


def local_contrast(img: torch.Tensor, window: int = 5, eps: float = 1e-6) -> torch.Tensor:
    """``D(I)``: local RMS contrast of RGB in a ``window x window`` neighbourhood.

    ``D = sqrt(mean_c(avg(I_c^2) - avg(I_c)^2) + eps) - sqrt(eps)``: 0 on flat regions, about the local standard
    deviation elsewhere; colour-only (iso-luminant) speckle counts as well as luma detail.

    Args:
        img: ``(N, 3, H, W)`` display-referred RGB (any float dtype).
        window: odd window size >= 3.
        eps: keeps the square root differentiable at 0.

    Returns:
        ``(N, 1, H, W)``, >= 0, in the units of ``img`` (at most 0.5 for images in [0, 1]).
    """
    if window < 3 or window % 2 == 0:
        raise ValueError(f'heuristic perception: artifact_window must be an odd integer >= 3, got {window}')
    mean = _box_mean(img, window)
    var = (_box_mean(img * img, window) - mean * mean).clamp(min=0.0).mean(dim=1, keepdim=True)
    return (var + eps).sqrt() - eps**0.5


def unexplained_contrast(
    img: torch.Tensor, reference: torch.Tensor, window: int = 5, eps: float = 1e-4
) -> torch.Tensor:
    """Local contrast of ``img`` that no local affine map of ``reference`` explains.

    In each ``window x window`` neighbourhood and channel, ``img ~ a * reference + b`` is fitted by least squares (the
    guided filter's local linear model, He et al. 2010); what remains is ``var(img) - cov^2 / (var(reference) +
    eps)``. A different tone curve, gain or contrast applied to the reference is locally affine and leaves nothing;
    ringing, halos, checkerboards, noise and banding that the reference does not have remain. Where the reference
    is flat (variance well below ``eps``) all of the image's local variation remains.

    Args:
        img: ``(N, 3, H, W)`` display-referred RGB.
        reference: ``(N, 3, H, W)`` display-referred RGB, same shape.
        window: odd window size >= 3.
        eps: regulariser of the fit (display units squared; 1e-4 = a standard deviation of 0.01).

    Returns:
        ``(N, 1, H, W)``, >= 0: the residual standard deviation, channel mean of the variances.
    """
    if window < 3 or window % 2 == 0:
        raise ValueError(f'heuristic perception: artifact_window must be an odd integer >= 3, got {window}')
    mean_i, mean_r = _box_mean(img, window), _box_mean(reference, window)
    var_i = _box_mean(img * img, window) - mean_i * mean_i
    var_r = (_box_mean(reference * reference, window) - mean_r * mean_r).clamp(min=0.0)
    cov = _box_mean(img * reference, window) - mean_i * mean_r
    residual = (var_i - cov * cov / (var_r + eps)).clamp(min=0.0).mean(dim=1, keepdim=True)
    return (residual + 1e-6).sqrt() - 1e-6**0.5


def artifact_map(
    img: torch.Tensor,
    reference: torch.Tensor | None = None,
    window: int = 5,
    margin: float = 0.01,
    scale: float = 0.05,
    sat_tau: float = 0.8,
) -> torch.Tensor:
    """Artifact map ``M_af`` (this project's choice; formulas in the module docstring).

    Args:
        img: ``(N, 3, H, W)`` display-referred RGB in [0, 1] (e.g. a mu-law-compressed HDR output).
        reference: optional ``(N, 3, H, W)`` in the same display encoding as ``img`` (e.g. the generator input mapped
            to the output domain). With it, artifacts = local detail of ``img`` in excess of the reference's;
            without it, local detail inside bright regions (``avg(Y) > sat_tau``).
        window: odd window of the local contrast ``D``.
        margin: contrast excess (in [0, 1] image units) tolerated before anything counts as an artifact.
        scale: excess over the margin that gives ``M_af = 1 - 1/e`` (0.63).
        sat_tau: brightness above which the reference-free variant looks for blobs.

    Returns:
        ``(N, 1, H, W)`` in [0, 1).
    """
    if scale <= 0 or margin < 0:
        raise ValueError(
            f'heuristic perception: need artifact_scale > 0 and artifact_margin >= 0, got {scale}, {margin}'
        )
    detail = local_contrast(img, window)
    if reference is None:
        _check_tau(sat_tau)
        bright = _box_mean(luminance(img), window)
        weight = ((bright - sat_tau) / (1.0 - sat_tau)).clamp(0.0, 1.0)
        return -torch.expm1(-F.relu(detail - margin) / scale) * weight
    excess = detail - local_contrast(reference, window) - margin
    return -torch.expm1(-F.relu(excess) / scale)


def heuristic_maps(
    img: torch.Tensor,
    reference: torch.Tensor | None = None,
    tau: float = 0.95,
    channel_reduce: str = 'luma',
    artifact_window: int = 5,
    artifact_margin: float = 0.01,
    artifact_scale: float = 0.05,
    artifact_sat_tau: float = 0.8,
) -> PerceptionMaps:
    """Compute the three perception maps of ``img`` with the heuristics of the module docstring.

    Used by the generator's gating (inside every feedback iteration) and by the perception loss L_heu; keep the
    arguments of both in sync through the YAML options.

    Args:
        img: ``(N, 3, H, W)`` float, display-referred RGB in [0, 1] (sRGB LDR, or mu-law-compressed normalised HDR).
        reference: optional ``(N, 3, H, W)`` float in the same display encoding as ``img``; used by the artifact map.
        tau: exposure threshold of ``M_ox`` / ``M_ux`` (0.95 as SingleHDR(W)).
        channel_reduce: ``'luma'`` or ``'max'``, the brightness thresholded by the exposure maps.
        artifact_window: odd window size of the local contrast.
        artifact_margin: tolerated local-contrast excess.
        artifact_scale: softness of the artifact squashing.
        artifact_sat_tau: brightness threshold of the reference-free artifact variant.

    Returns:
        :class:`PerceptionMaps` with ``(N, 1, H, W)`` maps in [0, 1] on ``img``'s device and dtype.
    """
    _check_image(img, 'img')
    if reference is not None:
        _check_image(reference, 'reference')
        if reference.shape != img.shape:
            raise ValueError(
                f'heuristic perception: reference shape {tuple(reference.shape)} != img shape {tuple(img.shape)}'
            )
    return PerceptionMaps(
        artifact=artifact_map(img, reference, artifact_window, artifact_margin, artifact_scale, artifact_sat_tau),
        over=over_exposure_map(img, tau, channel_reduce),
        under=under_exposure_map(img, tau, channel_reduce),
    )


# ------------------------------------------------------------------------------------------ reconstruction maps
#: Display value of an LDR channel where the soft clipped mask starts (reaches 1 at 1.0).
CLIP_TAU = 0.9
#: Display value of an LDR pixel (all channels) below which the soft under-exposed mask starts (1 at 0): the
#: ``1 - tau`` of SingleHDR(W)'s well-exposedness mask.
UNDER_TAU = 0.05
#: Linear level a black pixel is expected at: half an 8-bit code value above black, decoded with sRGB.
BLACK_FLOOR = float(srgb_decode(torch.tensor(0.5 / 255.0, dtype=torch.float64)))


def clipped_mask(ldr: torch.Tensor, tau: float = CLIP_TAU) -> torch.Tensor:
    """Soft mask of the LDR input's clipped pixels: ``clip((max_c x - tau) / (1 - tau), 0, 1)``.

    Args:
        ldr: ``(N, 3, H, W)`` display-referred LDR in [0, 1].
        tau: display value where the ramp starts.

    Returns:
        ``(N, 1, H, W)`` in [0, 1] (1 = a channel at white).
    """
    _check_tau(tau)
    return ((ldr.amax(dim=1, keepdim=True) - tau) / (1.0 - tau)).clamp(0.0, 1.0)


def underexposed_mask(ldr: torch.Tensor, tau: float = UNDER_TAU) -> torch.Tensor:
    """Soft mask of the LDR input's under-exposed pixels: ``clip((tau - max_c x) / tau, 0, 1)`` (1 = black).

    Args:
        ldr: ``(N, 3, H, W)`` display-referred LDR in [0, 1].
        tau: display value where the ramp ends.

    Returns:
        ``(N, 1, H, W)`` in [0, 1].
    """
    if not 0 < tau < 1:
        raise ValueError(f'heuristic perception: under_tau must lie in (0, 1), got {tau}')
    return ((tau - ldr.amax(dim=1, keepdim=True)) / tau).clamp(0.0, 1.0)


def checkerboard_amplitude(img: torch.Tensor, window: int = 5) -> torch.Tensor:
    """``(N, 1, H, W)`` local amplitude of a coherent 2 x 2 checkerboard pattern in ``img``, channel mean.

    The response of ``[[1, -1], [-1, 1]] / 4`` is demodulated by the ``(-1)^(i + j)`` carrier and averaged over a
    ``window x window`` neighbourhood: a checkerboard of amplitude ``A`` (what transposed convolutions leave behind)
    gives ``A``, while natural texture, whose Nyquist component has no fixed phase, averages towards 0.
    """
    n, c, h, w = img.shape
    kernel = img.new_tensor([[1.0, -1.0], [-1.0, 1.0]]).view(1, 1, 2, 2).repeat(c, 1, 1, 1) / 4.0
    response = F.conv2d(F.pad(img, (0, 1, 0, 1), mode='replicate'), kernel, groups=c)
    yy = torch.arange(h, device=img.device).view(-1, 1)
    xx = torch.arange(w, device=img.device).view(1, -1)
    carrier = (1 - 2 * ((yy + xx) % 2)).to(img.dtype)
    return _box_mean(response * carrier, window).abs().mean(dim=1, keepdim=True)


#: Exposures (stops below the input's) at which a reconstruction is rendered to look for checkerboard patterns: the
#: input's own exposure and two darker ones, so that patterns inside expanded highlights are seen too.
CHECKER_BRACKET = (0.0, 3.0, 6.0)


def reconstruction_maps(
    hdr: torch.Tensor,
    ldr: torch.Tensor,
    stops: float = 0.5,
    clip_tau: float = CLIP_TAU,
    under_tau: float = UNDER_TAU,
    black_floor: float = BLACK_FLOOR,
    artifact_window: int = 5,
    artifact_margin: float = 0.01,
    artifact_scale: float = 0.05,
    checker_margin: float = 0.004,
    checker_scale: float = 0.01,
) -> PerceptionMaps:
    """Perception maps of an HDR reconstruction, judged against its LDR input.

    The reconstruction is judged as rendered for display: re-exposed at the input's exposure (white = the LDR's
    clipping level = 1) and sRGB-encoded, ``r = srgb_encode(clip(hdr, 0, 1))``, which a faithful reconstruction
    makes equal to the input ``x`` wherever ``x`` is neither clipped nor dark. With ``P = max_c hdr`` (the brightest
    channel, the one a camera clips first), ``Y`` its luminance, ``c`` / ``k`` the soft clipped / under-exposed masks
    of the input (:func:`clipped_mask`, :func:`underexposed_mask`) and ``s = sigmoid``::

        over     = c * s(-(4 / stops) * (log2(P) - stops / 2))         clipped highlights still at white
        under    = k * s(-2 * log2((Y + floor / 16) / floor))            dark shadows still at black
        artifact = 1 - exp(-(c * relu(max_b A(r_b) - A(x) - mc) / sc + (1 - dilate(c)) * relu(U(r, x) - m) / s))

    ``over`` is 0.88 at white and 0.12 at ``stops`` above it: smooth, so a linearised input (``P`` = 1 in its
    clipped pixels) gets a gradient there, and the ground truth, brighter than white wherever the camera clipped,
    scores lower; beyond ``stops`` the push fades, so how far a highlight goes is left to the other terms. ``under``
    asks the dark pixels of the input for at least half a code value of light (``black_floor``), the expected value
    of a pixel that quantised to 0; shadows above that floor are left alone. In the artifact map ``C`` is the
    local contrast of the rendering that no local affine map of the input explains (:func:`unexplained_contrast`),
    counted outside the clipped regions (dilated by the window): halos, ringing, checkerboards, banding and noise
    that the input does not have where it holds all the information, but no penalty for a different tone curve (the
    camera's is unknown). Inside them, where the input is flat white and recovered detail must not be punished, only
    a coherent checkerboard counts: ``A`` is :func:`checkerboard_amplitude` of the renderings
    ``r_b = srgb_encode(clip(2^-b hdr, 0, 1))`` at the darker exposures ``b`` of :data:`CHECKER_BRACKET` (0, 3, 6
    stops), where an expanded highlight is visible.

    Args:
        hdr: ``(N, 3, H, W)`` linear HDR reconstruction, >= 0 (not clamped here), white = 1.
        ldr: ``(N, 3, H, W)`` its LDR input, display-referred in [0, 1].
        stops: expansion above white that counts as recovered.
        clip_tau, under_tau: ramps of the input masks.
        black_floor: linear level expected in pixels that quantised to black.
        artifact_window, artifact_margin, artifact_scale: local-contrast window, tolerance and softness (display
            units).
        checker_margin, checker_scale: checkerboard-amplitude tolerance and softness (display units).

    Returns:
        :class:`PerceptionMaps` with ``(N, 1, H, W)`` maps in [0, 1], differentiable w.r.t. ``hdr``.
    """
    _check_image(hdr, 'hdr')
    _check_image(ldr, 'ldr')
    if ldr.shape != hdr.shape:
        raise ValueError(f'reconstruction_maps: ldr shape {tuple(ldr.shape)} != hdr shape {tuple(hdr.shape)}')
    if stops <= 0 or black_floor <= 0 or checker_scale <= 0 or artifact_scale <= 0:
        raise ValueError('reconstruction_maps: stops, black_floor, checker_scale and artifact_scale must be > 0')
    clipped = clipped_mask(ldr, clip_tau)
    peak = hdr.amax(dim=1, keepdim=True)  # no clamp: it would cut the gradient at exactly 0 (a black pixel)
    over = clipped * torch.sigmoid(-(4.0 / stops) * (torch.log2(peak + 1e-6) - 0.5 * stops))
    lum = luminance(hdr)
    under = underexposed_mask(ldr, under_tau) * torch.sigmoid(-2.0 * torch.log2((lum + black_floor / 16) / black_floor))
    bracket = [checkerboard_amplitude(srgb_encode(hdr * 2.0**-b), artifact_window) for b in CHECKER_BRACKET]
    own = checkerboard_amplitude(ldr, artifact_window)  # the input's own pattern (natural texture near white)
    checker = clipped * F.relu(torch.stack(bracket).amax(dim=0) - own - checker_margin) / checker_scale
    outside = 1.0 - F.max_pool2d(clipped, artifact_window, stride=1, padding=artifact_window // 2)
    excess = outside * F.relu(unexplained_contrast(srgb_encode(hdr), ldr, artifact_window) - artifact_margin)
    excess = excess / artifact_scale
    return PerceptionMaps(artifact=-torch.expm1(-(checker + excess)), over=over, under=under)
