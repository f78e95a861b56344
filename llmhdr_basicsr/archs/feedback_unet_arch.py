"""FeedbackUNet: the LLM-HDR / CycleHDR generator (method.md §2, §3.3), used for both G_Y (LDR->HDR) and G_X (HDR->LDR).

Structure (``F = num_feat``; widths F, 2F, 4F, 8F = 64/128/256/512 by default, as the paper's figure)::

    x -> pad to a multiple of 8 -> encoder (runs ONCE)
         L1: conv3x3(in->F), conv3x3(F->F)            -> s1 (full res)     each conv: + norm + LReLU(0.2)
         maxpool2 -> L2: 2F, 2F                        -> s2 (1/2)
         maxpool2 -> L3: 4F, 4F                        -> s3 (1/4)
         maxpool2 -> L4: 8F, 8F                        -> e  (1/8, bottleneck)
    for t = 0 .. num_iter-1 (decoder weights shared across t):
         maps_t = [artifact, over, under] of y_{t-1} (t = 0: of the input, or the external ``maps``)
         u_t  = FiLM(e * gate_af(artifact), guidance_t)          artifact map -> bottleneck ("Layer 4", §3.3)
         h_t, c_t = ConvLSTM(u_t, (h_{t-1}, c_{t-1}))            feedback state at the bottleneck (§2.3), h_0=c_0=0
         b_t  = u_t + conv1x1(h_t)                               hidden state (lstm_feat ch) restored to 8F ch
         d3 = convs(cat(up(b_t), s3 * gate_ux3(under))) * gate_ox(over)   over map -> level 3 ("Layer 3")
         d2 = convs(cat(up(d3),  s2 * gate_ux2(under)))                    under map -> skips 1, 2, 3
         d1 = convs(cat(up(d2),  s1 * gate_ux1(under)))
         y_t = sigmoid(logit(base) + conv1x1(d1))   (residual=True)   or   sigmoid(conv1x1(d1))
    output y_{num_iter-1}, cropped back; ``return_all=True`` gives [y_0, ..., y_{T-1}] (deep supervision, as FHDR).

Domains (``out_domain``):

- ``'hdr_mu'`` (G_Y): input = LDR ``(N, 3, H, W)``, display-referred sRGB in [0, 1]; output = mu-law-compressed
  (mu = 5000) normalised linear HDR in [0, 1], ``T(H)`` of method.md §5. ``base = mu_law(srgb_decode(x))``: the
  linearised LDR read as normalised HDR.
- ``'ldr'`` (G_X): input = mu-law-compressed normalised linear HDR in [0, 1]; output = display-referred sRGB LDR in
  [0, 1]. ``base = srgb_encode(mu_law_inverse(x))``: clip at 1 and sRGB-encode.
- ``crf_basis`` (an addition of this project): the fixed sRGB curve of ``base`` becomes a per-image mixture of camera
  curves predicted from the bottleneck ``e`` (:mod:`llmhdr_basicsr.archs.crf_basis`), starting at sRGB.

Choices where method.md leaves things open (§2.2 [UNKNOWN]), with reasons:

- Down-sampling by 2x2 max-pool, up-sampling by 2x2 stride-2 transposed conv: the classic U-Net of the figure (its
  ~7.7 M parameter estimate assumes exactly this); max-pool adds no parameters.
- ConvLSTM hidden width ``lstm_feat`` (default 4F = 256 for the 512-ch bottleneck, method.md's recommendation), a 1x1
  conv restores 8F channels and is *added* to the bottleneck feature, so the encoder feature always reaches the
  decoder and the feedback state refines it. Initial state ``h_0 = c_0 = 0`` (no parameters; FHDR's copy-the-input
  reading needs a projection and blurs what "state" means). Forget-gate bias 1. State lives only inside one
  ``forward`` call (FHDR leaked it across batches).
- What feeds back: the previous output enters through the perception maps (recomputed from ``y_{t-1}`` each
  iteration) and the guidance callable; the artifact-gated, FiLM-modulated bottleneck is the ConvLSTM *input*, so the
  state integrates that information across iterations.
- Gating (§3.3): residual form ``f * (1 + g)`` with ``g = M * tanh(conv3x3(M))``, ``M`` the map average-pooled to the
  feature size and the 1->C conv zero-initialised. Hence: an all-zero map gives ``g = 0`` -> the features pass
  unchanged, whatever the weights (no defect, no modulation); an all-one map gives a per-channel constant factor
  ``1 + tanh(bias_c + sum(w_c))`` in (0, 2) (replicate padding keeps it constant up to the borders); an untrained
  gate is the identity for any map. The factor stays in ``[1 - M, 1 + M]``.
- Maps at t = 0 come from the input itself (both input kinds are display-like: sRGB LDR or mu-law HDR), the
  artifact map in its reference-free variant; at t >= 1 from ``y_{t-1}`` with ``base`` (the input in the output
  domain) as the artifact reference. ``detach_maps=True`` (default) computes them without gradient, as a VLM answer
  would be, so the network cannot game its own perception signal; it also saves memory.
- CLIP guidance (§1, §2.3): FiLM at the bottleneck, MLP last layer zero-initialised (identity at start).
- Residual output (method.md §7: predicting a correction on top of the linearised input was the biggest lever): the
  head is zero-initialised, so an untrained net returns exactly ``clamp(base, eps, 1 - eps)``.
- Any size: replicate padding to a multiple of 8 (and to at least 16, so instance norm has >1 bottleneck pixel), crop
  back. Instance norm has no running statistics, so train and eval behave the same.
- Weights: N(0, 0.02) everywhere (CycleGAN), except the zero-init head, FiLM output layer and gate convs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from llmhdr_basicsr.perception.heuristic import PerceptionMaps, heuristic_maps
from llmhdr_basicsr.utils.tonemap import hdr_to_model, model_to_hdr, srgb_decode, srgb_encode

from .arch_util import ConvLSTMCell, FiLM, conv_norm_act, init_weights, pad_to_multiple
from .crf_basis import CRFBasisBase

#: Output domains of :class:`FeedbackUNet`.
OUT_DOMAINS = ('hdr_mu', 'ldr')

Guidance = torch.Tensor | Callable[[torch.Tensor | None], torch.Tensor] | None


def output_domain_base(x: torch.Tensor, out_domain: str, headroom: float = 0.0) -> torch.Tensor:
    """The generator input mapped to the output domain without learning (the residual base).

    HDR in the model is ``T(H / 2^headroom)``: linear HDR whose diffuse white (the LDR clipping level, the
    normalisation reference of the datasets) is 1, compressed with mu-law after leaving ``headroom`` stops above white
    for highlights (method.md §7: real light sources sit 2.6-17x above clip).

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
    """Residual map gating ``f * (1 + M * tanh(conv3x3(M)))`` (method.md §3.3, [INFERRED] form).

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
        gating: apply the artifact / over / under maps (method.md §3.3); False removes the gates entirely.
        guidance_dim: length of the guidance vector (e.g. 1024 for concat of two ViT-B/32 CLIP embeddings); 0 = no
            FiLM (and passing ``guidance`` is an error).
        guidance_hidden: hidden width of the FiLM MLP; None = ``4 * num_feat``.
        out_domain: ``'hdr_mu'`` (LDR in, mu-law HDR out) or ``'ldr'`` (mu-law HDR in, LDR out); both sigmoid
            outputs in [0, 1].
        residual: predict a logit correction on top of :func:`output_domain_base` (zero-initialised head) instead of
            a plain sigmoid image.
        residual_eps: the base is clamped to ``[eps, 1 - eps]`` before the logit.
        norm: ``'instance'`` or ``'none'`` after every conv except the head and the gates.
        detach_maps: compute the feedback maps without gradient (see module docstring).
        perception_opt: keyword arguments for :func:`llmhdr_basicsr.perception.heuristic.heuristic_maps` (``tau``,
            ``channel_reduce``, ``artifact_*``); keep them equal to the perception loss's.
        init_std: std of the N(0, std) weight initialisation.
        pad_mode: padding to a multiple of 8: ``'replicate'`` (any size) or ``'reflect'`` (input > pad needed).
        headroom: stops of highlight range above diffuse white in the HDR (mu-law) domain, see
            :func:`output_domain_base`; 0 puts white at the top (no highlight expansion possible). The training
            option files use 4 (16x white). :class:`~llmhdr_basicsr.models.cyclehdr_model.CycleHDRModel` reads it
            from ``network_g`` to map linear HDR in and out of this domain.
        crf_basis: replace the fixed sRGB curve of the residual base by a per-image mixture of camera curves predicted
            from the bottleneck (:class:`~llmhdr_basicsr.archs.crf_basis.CRFBasisBase`; an addition of this
            project): ``true`` = the default basis, a list of ``['gamma', g]`` / ``['sigmoid', g, beta]`` = that
            basis, false/None = off (the base is the fixed sRGB curve). Needs ``residual=True``.
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
        crf_basis: bool | list | None = None,
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
        if gating and num_in_ch != 3:
            raise ValueError(f'FeedbackUNet: gating computes perception maps of an RGB input; num_in_ch={num_in_ch}')
        if not 0.0 < residual_eps < 0.5:
            raise ValueError(f'FeedbackUNet: residual_eps must lie in (0, 0.5), got {residual_eps}')
        if pad_mode not in ('replicate', 'reflect'):
            raise ValueError(f"FeedbackUNet: pad_mode must be 'replicate' or 'reflect', got {pad_mode!r}")
        if guidance_dim < 0:
            raise ValueError(f'FeedbackUNet: guidance_dim must be >= 0, got {guidance_dim}')
        self.num_iter, self.gating, self.out_domain = num_iter, gating, out_domain
        self.headroom = float(headroom)
        self.residual, self.residual_eps = residual, residual_eps
        self.detach_maps, self.pad_mode = detach_maps, pad_mode
        self.num_in_ch, self.guidance_dim = num_in_ch, guidance_dim
        self.perception_opt = dict(perception_opt or {})
        try:  # fail at construction, not in the first training step, on a bad perception_opt
            heuristic_maps(torch.zeros(1, 3, 8, 8), **self.perception_opt)
        except (TypeError, ValueError) as err:
            raise ValueError(f'FeedbackUNet: invalid perception_opt {self.perception_opt}: {err}') from err
        c1, c2, c3, c4 = (num_feat * m for m in (1, 2, 4, 8))
        lstm_feat = 4 * num_feat if lstm_feat is None else lstm_feat

        def level(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(conv_norm_act(cin, cout, 3, norm=norm), conv_norm_act(cout, cout, 3, norm=norm))

        # encoder (runs once per forward)
        self.enc1, self.enc2, self.enc3, self.enc4 = level(num_in_ch, c1), level(c1, c2), level(c2, c3), level(c3, c4)
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
            if not (crf_basis is True or isinstance(crf_basis, (list, tuple))):
                raise ValueError(
                    f'FeedbackUNet: crf_basis must be true, false/null or a list of curves, not {crf_basis!r}'
                )
            direction = 'decode' if out_domain == 'hdr_mu' else 'encode'
            self.crf = CRFBasisBase(c4, direction, None if crf_basis is True else crf_basis)
        if gating:
            self.gate_af, self.gate_ox = MapGate(c4), MapGate(c3)
            self.gate_ux = nn.ModuleList([MapGate(c1), MapGate(c2), MapGate(c3)])
        init_weights(self, init_std)
        if self.crf is not None:  # its own initialisation (sRGB-anchored), not N(0, std)
            self.crf.reset_parameters()
        # special initialisations after the global N(0, std)
        self.lstm.reset_forget_bias()
        if self.film is not None:
            self.film.reset_identity()
        if gating:
            for m in self.modules():
                if isinstance(m, MapGate):
                    m.reset_identity()
        if residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # ----------------------------------------------------------------------------------------------------------------
    def _maps(self, img: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        """``(N, 3, H, W)`` [artifact, over, under] of a display-like image, per ``detach_maps``."""
        if self.detach_maps:
            with torch.no_grad():
                return heuristic_maps(img.detach(), reference, **self.perception_opt).stack()
        return heuristic_maps(img, reference, **self.perception_opt).stack()

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
        return maps.to(x.dtype)

    def forward(
        self,
        x: torch.Tensor,
        guidance: Guidance = None,
        maps: torch.Tensor | PerceptionMaps | None = None,
        return_all: bool = False,
        detach_curve: bool = False,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Reconstruct.

        Args:
            x: ``(N, 3, H, W)`` float, any H, W. For ``out_domain='hdr_mu'``: display-referred sRGB LDR in [0, 1];
                for ``'ldr'``: mu-law-compressed normalised linear HDR in [0, 1].
            guidance: None (no FiLM), a ``(N, guidance_dim)`` tensor used at every iteration, or a callable
                ``guidance(prev) -> (N, guidance_dim)`` called at every iteration with the previous output
                (``(N, 3, H, W)`` in the output domain, cropped) or None at t = 0, e.g. concat(E(x), E(y_t)).
            maps: optional external ``(N, 3, H, W)`` [artifact, over, under] maps in [0, 1] (or a
                :class:`PerceptionMaps`) at the input size, used at t = 0 instead of the heuristic (e.g. cached VLM
                answers); later iterations always use the heuristic on ``y_{t-1}``. Ignored when ``gating=False``.
            return_all: return the list of all ``num_iter`` iteration outputs (the last equals the default output).
            detach_curve: with ``crf_basis``: this call trains everything but the camera-curve mixture weights (the
                model keeps them to the virtual-camera cycle, ``train.curve_from_camera``).

        Returns:
            ``(N, num_out_ch, H, W)`` in (0, 1) in the output domain, or a list of ``num_iter`` such tensors.
        """
        if x.dim() != 4 or x.size(1) != self.num_in_ch:
            raise ValueError(f'FeedbackUNet: expected input (N, {self.num_in_ch}, H, W), got {tuple(x.shape)}')
        n = x.size(0)
        xp, (h, w) = pad_to_multiple(x, 8, min_size=16, mode=self.pad_mode)

        # encoder, once (the feedback loop only re-runs the decoder, method.md §2.1 "decoder inside the loop")
        s1 = self.enc1(xp)
        s2 = self.enc2(F.max_pool2d(s1, 2))
        s3 = self.enc3(F.max_pool2d(s2, 2))
        e = self.enc4(F.max_pool2d(s3, 2))

        base = base_logit = None
        if self.crf is not None:  # learned per-image camera curve (crf_basis.py)
            if self.out_domain == 'hdr_mu':  # display LDR -> linear (white 1) -> T-space
                base = hdr_to_model(self.crf(xp, e, detach_curve), self.headroom)
            else:  # T-space HDR -> linear (values above white clip) -> display LDR
                base = self.crf(model_to_hdr(xp, self.headroom), e, detach_curve)
        elif self.residual or self.gating:
            base = output_domain_base(xp, self.out_domain, self.headroom)
        if self.residual:
            b = base.clamp(self.residual_eps, 1.0 - self.residual_eps)
            base_logit = torch.log(b) - torch.log1p(-b)
        if self.gating:
            if maps is not None:
                m = pad_to_multiple(self._check_maps(maps, x), 8, min_size=16, mode=self.pad_mode)[0]
            else:
                m = self._maps(xp, None)  # t = 0: the input itself (display-like in both domains)

        outputs: list[torch.Tensor] = []
        state = None  # (h, c) of the ConvLSTM: local to this call, never kept on the module
        prev_full = prev_out = None
        for t in range(self.num_iter):
            k1, k2, k3, u = s1, s2, s3, e
            if self.gating:
                if t > 0:  # maps of the previous iteration's output, artifacts relative to the input base
                    m = self._maps(prev_full, base)
                pyr = _map_pyramid(m, 4)  # scales 1, 1/2, 1/4, 1/8 = s1, s2, s3, bottleneck
                u = self.gate_af(e, pyr[3][:, 0:1])  # artifacts -> bottleneck ("Layer 4")
                k1, k2, k3 = (gate(s, p[:, 2:3]) for gate, s, p in zip(self.gate_ux, (s1, s2, s3), pyr))  # under
            g = self._guidance(guidance, prev_out, n)
            if g is not None:
                u = self.film(u, g)
            hid, state = self.lstm(u, state)
            bott = u + self.lstm_out(hid)
            d3 = self.dec3(torch.cat([self.up3(bott), k3], dim=1))
            if self.gating:
                d3 = self.gate_ox(d3, pyr[2][:, 1:2])  # over-exposure -> level 3 ("Layer 3")
            d2 = self.dec2(torch.cat([self.up2(d3), k2], dim=1))
            d1 = self.dec1(torch.cat([self.up1(d2), k1], dim=1))
            z = self.head(d1)
            prev_full = torch.sigmoid(z + base_logit) if self.residual else torch.sigmoid(z)
            prev_out = prev_full[..., :h, :w]
            outputs.append(prev_out)
        return outputs if return_all else outputs[-1]
