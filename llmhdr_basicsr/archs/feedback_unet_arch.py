"""FeedbackUNet: the LLM-HDR / CycleHDR generator, used for both G_Y (LDR->HDR) and G_X (HDR->LDR).

Structure (``F = num_feat``; widths F, 2F, 4F, 8F = 64/128/256/512 by default, as the paper's figure)::

    encode(x):   pad to a multiple of 8; encoder runs ONCE; the input mapped to the output domain ("base", the
                 residual anchor and iteration 0's view of the input); the input's own perception context
         L1: conv3x3(in->F), conv3x3(F->F)            -> s1 (full res)     each conv: + norm + LReLU(0.2)
         maxpool2 -> L2: 2F, 2F                        -> s2 (1/2)
         maxpool2 -> L3: 4F, 4F                        -> s3 (1/4)
         maxpool2 -> L4: 8F, 8F                        -> e  (1/8, bottleneck)
    for t = 0 .. num_iter-1 (decoder weights shared across t), prev_0 = base, prev_t = y_{t-1} WITH gradient:
         maps_t = perceive(prev_t)                                [artifact, over, under] of the current estimate
         f_t  = feedback(cat(prev_t, maps_t))                     the estimate itself re-enters (FHDR's feedback)
         u_t  = FiLM(e * gate_af(artifact) + pool8(f_t) W, guidance_t)     artifact map -> bottleneck ("Layer 4")
         h_t, c_t = ConvLSTM(u_t, (h_{t-1}, c_{t-1}))            feedback state at the bottleneck, h_0 = c_0 = 0
         b_t  = u_t + conv1x1(h_t)                               hidden state (lstm_feat ch) restored to 8F ch
         d3 = convs(cat(up(b_t), s3 * gate_ux3(under))) * gate_ox(over)   over map -> level 3 ("Layer 3")
         d2 = convs(cat(up(d3),  s2 * gate_ux2(under)))                    under map -> skips 1, 2, 3
         d1 = convs(cat(up(d2),  s1 * gate_ux1(under) + f_t))
         y_t = sigmoid(logit(base) + conv1x1(d1))   (residual=True)   or   sigmoid(conv1x1(d1))
    output y_{num_iter-1}, cropped back; ``return_all=True`` gives [y_0, ..., y_{T-1}] (deep supervision, as FHDR).

The three steps are methods: :meth:`FeedbackUNet.encode` (everything computed once per input, including every
domain conversion), :meth:`FeedbackUNet.perceive` (the perception maps of an estimate: the one place the generator
judges its output) and :meth:`FeedbackUNet.decode_step` (one feedback iteration).

Domains (``out_domain``):

- ``'hdr_mu'`` (G_Y): input = LDR ``(N, 3, H, W)``, display-referred sRGB in [0, 1]; output = the model's HDR domain
  ``T(H / 2^headroom)`` in [0, 1] (mu-law, mu = 5000, of linear HDR with diffuse white = the LDR's clipping level =
  1). ``base = T(srgb_decode(x) / 2^headroom)``: the linearised LDR. Perception maps judge the reconstruction against
  its LDR input (:func:`~llmhdr_basicsr.perception.heuristic.reconstruction_maps`, on the estimate re-rendered at the
  input's exposure: clipped highlights left at white, dark shadows left at black, checkerboard / extra contrast
  outside the clipped regions).
- ``'ldr'`` (G_X): input = HDR in that mu-law domain; output = display-referred sRGB LDR in [0, 1].
  ``base = srgb_encode(2^headroom mu_law_inverse(x))``: clip at white and sRGB-encode. Perception maps judge the
  display image (:func:`~llmhdr_basicsr.perception.heuristic.heuristic_maps`: saturated, dark, extra detail).
- ``crf_basis`` (an addition of this project): the fixed sRGB curve of ``base`` becomes a per-image mixture of camera
  curves predicted from the bottleneck ``e`` (:mod:`llmhdr_basicsr.archs.crf_basis`), starting at sRGB.

Iteration 0 sees the input through ``base``, in the output domain; iteration t >= 1 sees ``y_{t-1}`` in the same
domain and through the same perception function, so the maps of every iteration mean the same thing and the ones of
t >= 1 say what is still wrong with the current estimate (e.g. highlights not yet lifted above white). The estimate
enters the decoder through the ``feedback`` conv with its gradient (``feedback_input``, FHDR feeds its output back
the same way); the maps are computed without gradient by default (``detach_maps``): they condition the decoder, the
perception loss trains it. Design notes and the measured effect of each part: ``docs/method.md`` of the repository.

Other choices, with reasons:

- Down-sampling by 2x2 max-pool, up-sampling by 2x2 stride-2 transposed conv: the classic U-Net of the figure.
- ConvLSTM hidden width ``lstm_feat`` (default 4F), a 1x1 conv restores 8F channels and is *added* to the
  bottleneck feature, so the encoder feature always reaches the decoder and the state refines it. ``h_0 = c_0 = 0``,
  forget-gate bias 1. State lives only inside one ``forward`` call (FHDR leaked it across batches).
- Gating: residual form ``f * (1 + g)`` with ``g = M * tanh(conv3x3(M))``, ``M`` the map average-pooled to the
  feature size and the 1->C conv zero-initialised: an all-zero map or an untrained gate changes nothing; the factor
  stays in ``[1 - M, 1 + M]``.
- The feedback conv's output layers are zero-initialised, the head too (``residual``): an untrained net returns
  exactly ``clamp(base, eps, 1 - eps)`` at every iteration.
- CLIP guidance: FiLM at the bottleneck, MLP last layer zero-initialised (identity at start).
- Any size: replicate padding to a multiple of 8 (and to at least 16), crop back. Instance norm has no running
  statistics, so train and eval behave the same. Weights N(0, 0.02) (CycleGAN) except the zero-initialised parts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from llmhdr_basicsr.perception.heuristic import PerceptionMaps, heuristic_maps, reconstruction_maps
from llmhdr_basicsr.utils.tonemap import hdr_to_model, model_to_hdr, srgb_decode, srgb_encode

from .arch_util import ConvLSTMCell, FiLM, conv_norm_act, init_weights, pad_to_multiple
from .crf_basis import NAMED_BASES, CRFBasisBase
from .highlight_expansion import HighlightExpansion

#: Output domains of :class:`FeedbackUNet`.
OUT_DOMAINS = ('hdr_mu', 'ldr')

Guidance = torch.Tensor | Callable[[torch.Tensor | None], torch.Tensor] | None


def output_domain_base(x: torch.Tensor, out_domain: str, headroom: float = 0.0) -> torch.Tensor:
    """The generator input mapped to the output domain without learning (the residual base).

    HDR in the model is ``T(H / 2^headroom)``: linear HDR whose diffuse white (the LDR clipping level, the
    normalisation reference of the datasets) is 1, compressed with mu-law after leaving ``headroom`` stops above white
    for highlights (light sources sit several stops above the clipping level).

    Args:
        x: ``(N, 3, H, W)``; for ``'hdr_mu'`` display-referred sRGB LDR in [0, 1], for ``'ldr'`` HDR in that
            mu-law space, in [0, 1].
        out_domain: ``'hdr_mu'`` -> ``mu_law(srgb_decode(x) / 2^headroom)`` (the linearised LDR, white at 1);
            ``'ldr'`` -> ``srgb_encode(mu_law_inverse(x) * 2^headroom)`` (sRGB LDR, linear values above white clip).
        headroom: stops between diffuse white and the top of the mu-law range.

    Returns:
        ``(N, 3, H, W)`` in [0, 1], in the output domain (display-like in both cases).
    """
    if out_domain == 'hdr_mu':
        return hdr_to_model(srgb_decode(x), headroom)
    if out_domain == 'ldr':
        return srgb_encode(model_to_hdr(x, headroom))
    raise ValueError(f'out_domain must be one of {OUT_DOMAINS}, got {out_domain!r}')


class MapGate(nn.Module):
    """Residual map gating ``f * (1 + M * tanh(conv3x3(M)))`` (the form is this project's choice; ``docs/method.md``).

    Args:
        num_ch: channels of the gated feature.
    """

    def __init__(self, num_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, num_ch, 3, padding=1, padding_mode='replicate')
        self.reset_identity()

    def reset_identity(self) -> None:
        """Zero weight and bias: the gate is the identity for every map until it learns."""
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Gate ``feat`` (``(N, C, h, w)``) with ``mask`` (``(N, 1, h, w)`` in [0, 1], already at the feature size)."""
        return torch.addcmul(feat, feat, mask * torch.tanh(self.conv(mask)))  # f + f * g: one full-size op fewer


def _map_pyramid(maps: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``(N, 3, H, W)`` maps at scales 1, 1/2, ..., 1/2^(levels-1) by 2x2 average pooling (area resize)."""
    out = [maps]
    for _ in range(levels - 1):
        out.append(F.avg_pool2d(out[-1], 2))
    return out


@dataclass
class Encoding:
    """What :meth:`FeedbackUNet.encode` computes once per input and every feedback iteration reuses.

    All tensors are at the padded size ``(H', W')`` (a multiple of 8); ``size`` is the input's ``(H, W)``.

    Attributes:
        x: ``(N, 3, H', W')`` the padded input, in the input domain.
        skips: ``(s1, s2, s3)`` encoder features at scales 1, 1/2, 1/4.
        bottleneck: ``(N, 8F, H'/8, W'/8)`` encoder feature ``e``.
        base: ``(N, 3, H', W')`` the input in the output domain (the residual anchor, iteration 0's estimate), or
            None when the network has neither ``residual`` nor ``gating``.
        base_logit: ``logit(clamp(base, eps, 1 - eps))`` for the residual head, or None.
        size: ``(H, W)`` before padding.
    """

    x: torch.Tensor
    skips: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    bottleneck: torch.Tensor
    base: torch.Tensor | None
    base_logit: torch.Tensor | None
    size: tuple[int, int]


def _accepted(fn: Callable, options: dict) -> dict:
    """The entries of ``options`` that ``fn`` takes as keyword arguments."""
    names = set(inspect.signature(fn).parameters)
    return {k: v for k, v in options.items() if k in names}


@ARCH_REGISTRY.register()
class FeedbackUNet(nn.Module):
    """U-Net with a ConvLSTM feedback loop around a shared decoder, perception-map gating and FiLM guidance.

    See the module docstring for the data flow and the reasons behind each choice.

    Args:
        num_in_ch: input channels (3; must equal ``num_out_ch`` when ``residual``).
        num_out_ch: output channels (3).
        num_feat: width of the first level; levels use ``num_feat * (1, 2, 4, 8)``.
        num_iter: feedback iterations ``T`` (decoder passes); every one emits an image, the last is the output.
        lstm_feat: ConvLSTM hidden channels; None = ``4 * num_feat``.
        lstm_kernel: ConvLSTM conv size (odd).
        gating: apply the artifact / over / under maps; False removes the gates entirely.
        feedback_input: iterations see the previous estimate and its maps through the feedback conv (with
            gradient); False: only through the gates and the ConvLSTM state.
        guidance_dim: length of the guidance vector (e.g. 1024 for concat of two ViT-B/32 CLIP embeddings); 0 = no
            FiLM (and passing ``guidance`` is an error).
        guidance_hidden: hidden width of the FiLM MLP; None = ``4 * num_feat``.
        out_domain: ``'hdr_mu'`` (LDR in, mu-law HDR out) or ``'ldr'`` (mu-law HDR in, LDR out); both sigmoid
            outputs in [0, 1].
        residual: predict a logit correction on top of :func:`output_domain_base` (zero-initialised head) instead of
            a plain sigmoid image.
        residual_eps: the base is clamped to ``[eps, 1 - eps]`` before the logit.
        norm: ``'instance'`` or ``'none'`` after every conv except the head, the gates and the feedback output.
        detach_maps: compute the perception maps without gradient (they condition, the loss trains).
        perception_opt: keyword arguments of the perception functions
            (:func:`~llmhdr_basicsr.perception.heuristic.reconstruction_maps` for ``'hdr_mu'``,
            :func:`~llmhdr_basicsr.perception.heuristic.heuristic_maps` for ``'ldr'``; keys the function does not take
            are ignored); keep them equal to the perception loss's.
        init_std: std of the N(0, std) weight initialisation.
        pad_mode: padding to a multiple of 8: ``'replicate'`` (any size) or ``'reflect'`` (input > pad needed).
        headroom: stops of highlight range above diffuse white in the HDR (mu-law) domain, see
            :func:`output_domain_base`; 0 puts white at the top (no highlight expansion possible). The training
            option files use 4 (16x white). :class:`~llmhdr_basicsr.models.cyclehdr_model.CycleHDRModel` reads it
            from ``network_g`` to map linear HDR in and out of this domain.
        crf_basis: replace the fixed sRGB curve of the residual base by a per-image mixture of camera curves predicted
            from the bottleneck (:class:`~llmhdr_basicsr.archs.crf_basis.CRFBasisBase`; an addition of this
            project): ``true`` = the default basis, a name (``'shoulders'``: the default and two deeper highlight
            shoulders, :data:`~llmhdr_basicsr.archs.crf_basis.NAMED_BASES`), a list of ``['gamma', g]`` /
            ``['sigmoid', g, beta]`` / ``['logistic', slope, pivot]`` = that basis, false/None = off (the base is the
            fixed sRGB curve). Needs ``residual=True``.
        highlight_expansion: (``'hdr_mu'`` only) lift the saturated regions of the linearised base above white by a
            per-image number of stops predicted from the bottleneck
            (:class:`~llmhdr_basicsr.archs.highlight_expansion.HighlightExpansion`; an addition of this project):
            ``true`` = its defaults, a dict = its keyword arguments, false/None = off. Its ``max_stops`` is
            ``headroom``. Needs ``residual=True``.
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_iter: int = 3,
        lstm_feat: int | None = None,
        lstm_kernel: int = 3,
        gating: bool = True,
        feedback_input: bool = True,
        guidance_dim: int = 0,
        guidance_hidden: int | None = None,
        out_domain: str = 'hdr_mu',
        residual: bool = True,
        residual_eps: float = 1e-4,
        norm: str = 'instance',
        detach_maps: bool = True,
        perception_opt: dict | None = None,
        init_std: float = 0.02,
        pad_mode: str = 'replicate',
        headroom: float = 0.0,
        crf_basis: bool | str | list | None = None,
        highlight_expansion: bool | dict | None = None,
    ) -> None:
        super().__init__()
        if out_domain not in OUT_DOMAINS:
            raise ValueError(f'FeedbackUNet: out_domain must be one of {OUT_DOMAINS}, got {out_domain!r}')
        if norm not in ('instance', 'none'):
            raise ValueError(f"FeedbackUNet: norm must be 'instance' or 'none', got {norm!r}")
        if num_iter < 1:
            raise ValueError(f'FeedbackUNet: num_iter must be >= 1, got {num_iter}')
        if residual and not (num_in_ch == num_out_ch == 3):
            raise ValueError(
                f'FeedbackUNet: residual=True maps the RGB input to the output domain and needs num_in_ch = num_out_ch'
                f' = 3, got {num_in_ch}, {num_out_ch}'
            )
        if (gating or feedback_input) and not (num_in_ch == num_out_ch == 3):
            raise ValueError(
                'FeedbackUNet: gating and feedback_input judge RGB estimates and need num_in_ch = num_out_ch = 3, '
                f'got {num_in_ch}, {num_out_ch}'
            )
        if not 0.0 < residual_eps < 0.5:
            raise ValueError(f'FeedbackUNet: residual_eps must lie in (0, 0.5), got {residual_eps}')
        if pad_mode not in ('replicate', 'reflect'):
            raise ValueError(f"FeedbackUNet: pad_mode must be 'replicate' or 'reflect', got {pad_mode!r}")
        if guidance_dim < 0:
            raise ValueError(f'FeedbackUNet: guidance_dim must be >= 0, got {guidance_dim}')
        self.num_iter, self.gating, self.out_domain = num_iter, gating, out_domain
        self.feedback_input = feedback_input
        self.headroom = float(headroom)
        self.residual, self.residual_eps = residual, residual_eps
        self.detach_maps, self.pad_mode = detach_maps, pad_mode
        self.num_in_ch, self.guidance_dim = num_in_ch, guidance_dim
        self.perception_opt = dict(perception_opt or {})
        known = set(inspect.signature(reconstruction_maps).parameters) | set(
            inspect.signature(heuristic_maps).parameters
        )
        unknown = sorted(set(self.perception_opt) - known)
        if unknown:
            raise ValueError(f'FeedbackUNet: perception_opt has unknown key(s) {unknown}; known: {sorted(known)}')
        try:  # fail at construction, not in the first training step, on a bad perception_opt
            probe = torch.full((1, 3, 8, 8), 0.5)
            self._perception_maps(probe, probe, probe)
        except (TypeError, ValueError) as err:
            raise ValueError(f'FeedbackUNet: invalid perception_opt {self.perception_opt}: {err}') from err
        c1, c2, c3, c4 = (num_feat * m for m in (1, 2, 4, 8))
        lstm_feat = 4 * num_feat if lstm_feat is None else lstm_feat

        def level(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(conv_norm_act(cin, cout, 3, norm=norm), conv_norm_act(cout, cout, 3, norm=norm))

        # encoder (runs once per forward)
        self.enc1, self.enc2, self.enc3, self.enc4 = level(num_in_ch, c1), level(c1, c2), level(c2, c3), level(c3, c4)
        # feedback: the previous estimate and its maps, at full resolution and pooled to the bottleneck
        if feedback_input:
            self.feedback = nn.Sequential(conv_norm_act(6, c1, 3, norm=norm), nn.Conv2d(c1, c1, 3, padding=1))
            self.feedback_bottleneck = nn.Conv2d(c1, c4, 1)
        # feedback state at the bottleneck
        self.lstm = ConvLSTMCell(c4, lstm_feat, lstm_kernel)
        self.lstm_out = nn.Conv2d(lstm_feat, c4, 1)
        self.film = FiLM(guidance_dim, c4, guidance_hidden or 4 * num_feat) if guidance_dim > 0 else None
        # decoder (shared across iterations)
        self.up3, self.dec3 = nn.ConvTranspose2d(c4, c3, 2, 2), level(2 * c3, c3)
        self.up2, self.dec2 = nn.ConvTranspose2d(c3, c2, 2, 2), level(2 * c2, c2)
        self.up1, self.dec1 = nn.ConvTranspose2d(c2, c1, 2, 2), level(2 * c1, c1)
        self.head = nn.Conv2d(c1, num_out_ch, 1)
        self.crf = None
        if crf_basis not in (None, False):
            if not residual:
                raise ValueError('FeedbackUNet: crf_basis shapes the residual base and needs residual=True')
            if not (crf_basis is True or isinstance(crf_basis, (str, list, tuple))):
                raise ValueError(
                    f'FeedbackUNet: crf_basis must be true, false/null, a basis name or a list of curves, not '
                    f'{crf_basis!r}'
                )
            if isinstance(crf_basis, str) and crf_basis not in NAMED_BASES:
                raise ValueError(
                    f'FeedbackUNet: crf_basis {crf_basis!r} is not a basis name; choose one of {sorted(NAMED_BASES)}, '
                    'true (the default basis), false/null or a list of curves'
                )
            direction = 'decode' if out_domain == 'hdr_mu' else 'encode'
            self.crf = CRFBasisBase(c4, direction, None if crf_basis is True else crf_basis)
        self.expansion = None
        if highlight_expansion not in (None, False):
            if not residual or out_domain != 'hdr_mu':
                raise ValueError(
                    "FeedbackUNet: highlight_expansion shapes the residual base of out_domain 'hdr_mu' and needs "
                    'residual=True'
                )
            if not (highlight_expansion is True or isinstance(highlight_expansion, dict)):
                raise ValueError(
                    f'FeedbackUNet: highlight_expansion must be true, false/null or a dict, not {highlight_expansion!r}'
                )
            kwargs = {} if highlight_expansion is True else dict(highlight_expansion)
            self.expansion = HighlightExpansion(c4, max_stops=self.headroom, **kwargs)
        if gating:
            self.gate_af, self.gate_ox = MapGate(c4), MapGate(c3)
            self.gate_ux = nn.ModuleList([MapGate(c1), MapGate(c2), MapGate(c3)])
        init_weights(self, init_std)
        if self.crf is not None:  # its own initialisation (sRGB-anchored), not N(0, std)
            self.crf.reset_parameters()
        if self.expansion is not None:
            self.expansion.reset_parameters()
        # special initialisations after the global N(0, std): every optional path starts as the identity
        self.lstm.reset_forget_bias()
        if self.film is not None:
            self.film.reset_identity()
        if gating:
            for m in self.modules():
                if isinstance(m, MapGate):
                    m.reset_identity()
        if feedback_input:
            for layer in (self.feedback[-1], self.feedback_bottleneck):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        if residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # ---------------------------------------------------------------------------------------------------- steps
    def encode(self, x: torch.Tensor, detach_curve: bool = False) -> Encoding:
        """Everything computed once per input: padding, the encoder, and the input in the output domain.

        The domain conversions of the generator all happen here: ``base`` (the input mapped to the output domain by
        the fixed sRGB curve, or by the learned camera curve of ``crf_basis``, then lifted above white where the
        input saturates by ``highlight_expansion``) and its logit for the residual head.

        Args:
            x: ``(N, 3, H, W)`` input in the input domain (see :meth:`forward`).
            detach_curve: no gradient reaches the camera-curve mixture weights (``crf_basis``) nor the predicted
                expansion stops (``highlight_expansion``).
        """
        xp, size = pad_to_multiple(x, 8, min_size=16, mode=self.pad_mode)
        s1 = self.enc1(xp)
        s2 = self.enc2(F.max_pool2d(s1, 2))
        s3 = self.enc3(F.max_pool2d(s2, 2))
        e = self.enc4(F.max_pool2d(s3, 2))
        base = base_logit = None
        if self.out_domain == 'hdr_mu' and (self.crf is not None or self.expansion is not None):
            # display LDR -> linear (white 1; learned camera curve, crf_basis.py) -> highlights lifted above white
            # (highlight_expansion.py) -> T-space
            lin = self.crf(xp, e, detach_curve) if self.crf is not None else srgb_decode(xp)
            if self.expansion is not None:
                lin = self.expansion(lin, xp, e, detach_curve)
            base = hdr_to_model(lin, self.headroom)
        elif self.crf is not None:  # T-space HDR -> linear (values above white clip) -> display LDR
            base = self.crf(model_to_hdr(xp, self.headroom), e, detach_curve)
        elif self.residual or self.gating or self.feedback_input:
            base = output_domain_base(xp, self.out_domain, self.headroom)
        if self.residual:
            b = base.clamp(self.residual_eps, 1.0 - self.residual_eps)
            base_logit = torch.log(b) - torch.log1p(-b)
        return Encoding(xp, (s1, s2, s3), e, base, base_logit, size)

    def _perception_maps(self, estimate: torch.Tensor, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """The maps of one estimate in the output domain (see :meth:`perceive`), with gradient."""
        if self.out_domain == 'hdr_mu':
            kwargs = _accepted(reconstruction_maps, self.perception_opt)
            return reconstruction_maps(model_to_hdr(estimate, self.headroom), x, **kwargs).stack()
        return heuristic_maps(estimate, base, **_accepted(heuristic_maps, self.perception_opt)).stack()

    def perceive(self, enc: Encoding, estimate: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H', W')`` [artifact, over, under] maps of an estimate in the output domain (``enc.base`` at
        iteration 0, the previous output after), judged against the input; without gradient when ``detach_maps``.

        G_Y: :func:`~llmhdr_basicsr.perception.heuristic.reconstruction_maps` of the linear estimate against the LDR
        input (re-rendered at the input's exposure); G_X: the display maps of
        :func:`~llmhdr_basicsr.perception.heuristic.heuristic_maps` with the base as artifact reference.
        """
        if self.detach_maps:
            with torch.no_grad():
                return self._perception_maps(estimate.detach(), enc.x, enc.base)
        return self._perception_maps(estimate, enc.x, enc.base)

    def decode_step(
        self,
        enc: Encoding,
        estimate: torch.Tensor,
        maps: torch.Tensor | None,
        state: tuple[torch.Tensor, torch.Tensor] | None,
        guidance: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One feedback iteration: the shared decoder on the encoding, the current estimate and its maps.

        Args:
            enc: the :class:`Encoding` of the input.
            estimate: ``(N, 3, H', W')`` current estimate in the output domain (``enc.base`` at iteration 0); it
                reaches the decoder with its gradient (``feedback_input``).
            maps: ``(N, 3, H', W')`` [artifact, over, under] gating maps, or None (no gating).
            state: ConvLSTM ``(h, c)`` of the previous iteration, or None at iteration 0.
            guidance: ``(N, guidance_dim)`` FiLM guidance vector, or None.

        Returns:
            ``(y, state)``: ``y`` ``(N, num_out_ch, H', W')`` in (0, 1), the new estimate (padded size).
        """
        s1, s2, s3 = enc.skips
        k1, k2, k3, u = s1, s2, s3, enc.bottleneck
        if self.gating and maps is not None:
            pyr = _map_pyramid(maps, 4)  # scales 1, 1/2, 1/4, 1/8 = s1, s2, s3, bottleneck
            u = self.gate_af(u, pyr[3][:, 0:1])  # artifacts -> bottleneck ("Layer 4")
            k1, k2, k3 = (gate(s, p[:, 2:3]) for gate, s, p in zip(self.gate_ux, (s1, s2, s3), pyr))  # under
        if self.feedback_input:
            fb_maps = maps if maps is not None else estimate.new_zeros(estimate.shape)
            fb = self.feedback(torch.cat([estimate, fb_maps], dim=1))
            k1 = k1 + fb
            u = u + self.feedback_bottleneck(F.avg_pool2d(fb, 8))
        if guidance is not None:
            u = self.film(u, guidance)
        hid, state = self.lstm(u, state)
        bott = u + self.lstm_out(hid)
        d3 = self.dec3(torch.cat([self.up3(bott), k3], dim=1))
        if self.gating and maps is not None:
            d3 = self.gate_ox(d3, pyr[2][:, 1:2])  # over-exposure -> level 3 ("Layer 3")
        d2 = self.dec2(torch.cat([self.up2(d3), k2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), k1], dim=1))
        z = self.head(d1)
        y = torch.sigmoid(z + enc.base_logit) if self.residual else torch.sigmoid(z)
        return y, state

    # ----------------------------------------------------------------------------------------------------------------
    def _guidance(self, guidance: Guidance, prev: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if guidance is None:
            return None
        if self.film is None:
            raise ValueError('FeedbackUNet: guidance was passed but guidance_dim=0 (set guidance_dim in network_g)')
        g = guidance(prev) if callable(guidance) else guidance
        if not isinstance(g, torch.Tensor) or g.dim() != 2 or g.shape != (n, self.guidance_dim):
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f'FeedbackUNet: guidance must give (N={n}, guidance_dim={self.guidance_dim}), got {shape}')
        return g

    def _check_maps(self, maps: torch.Tensor | PerceptionMaps, x: torch.Tensor) -> torch.Tensor:
        if isinstance(maps, PerceptionMaps):
            maps = maps.stack()
        if not isinstance(maps, torch.Tensor) or maps.dim() != 4 or maps.size(1) != 3 or maps.shape[0] != x.shape[0]:
            shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ValueError(f'FeedbackUNet: maps must be (N, 3, H, W) [artifact, over, under] in [0, 1], got {shape}')
        if maps.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f'FeedbackUNet: maps size {tuple(maps.shape[-2:])} differs from the input size {tuple(x.shape[-2:])}'
            )
        return pad_to_multiple(maps.to(x.dtype), 8, min_size=16, mode=self.pad_mode)[0]

    def forward(
        self,
        x: torch.Tensor,
        guidance: Guidance = None,
        maps: torch.Tensor | PerceptionMaps | None = None,
        return_all: bool = False,
        detach_curve: bool = False,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Reconstruct: :meth:`encode` once, then ``num_iter`` times :meth:`perceive` and :meth:`decode_step`.

        Args:
            x: ``(N, 3, H, W)`` float, any H, W. For ``out_domain='hdr_mu'``: display-referred sRGB LDR in [0, 1];
                for ``'ldr'``: mu-law-compressed normalised linear HDR in [0, 1].
            guidance: None (no FiLM), a ``(N, guidance_dim)`` tensor used at every iteration, or a callable
                ``guidance(prev) -> (N, guidance_dim)`` called at every iteration with the previous output
                (``(N, 3, H, W)`` in the output domain, cropped) or None at t = 0, e.g. concat(E(x), E(y_t)).
            maps: optional external ``(N, 3, H, W)`` [artifact, over, under] maps in [0, 1] (or a
                :class:`PerceptionMaps`) at the input size, used at t = 0 instead of :meth:`perceive` (e.g. cached VLM
                answers about the input); later iterations always perceive ``y_{t-1}``. Ignored when ``gating=False``.
            return_all: return the list of all ``num_iter`` iteration outputs (the last equals the default output).
            detach_curve: with ``crf_basis``: this call trains everything but the camera-curve mixture weights (the
                model keeps them to the virtual-camera cycle, ``train.curve_from_camera``).

        Returns:
            ``(N, num_out_ch, H, W)`` in (0, 1) in the output domain, or a list of ``num_iter`` such tensors.
        """
        if x.dim() != 4 or x.size(1) != self.num_in_ch:
            raise ValueError(f'FeedbackUNet: expected input (N, {self.num_in_ch}, H, W), got {tuple(x.shape)}')
        enc = self.encode(x, detach_curve)
        h, w = enc.size
        external = self._check_maps(maps, x) if (maps is not None and self.gating) else None
        estimate, state, prev_out = enc.base, None, None
        outputs: list[torch.Tensor] = []
        for t in range(self.num_iter):
            m = None
            if self.gating:
                m = external if (t == 0 and external is not None) else self.perceive(enc, estimate)
            guidance_t = self._guidance(guidance, prev_out, x.size(0))
            estimate, state = self.decode_step(enc, estimate if self.feedback_input else None, m, state, guidance_t)
            prev_out = estimate[..., :h, :w]
            outputs.append(prev_out)
        return outputs if return_all else outputs[-1]
