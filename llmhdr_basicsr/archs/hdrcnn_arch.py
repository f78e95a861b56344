"""HDR-CNN: VGG16 encoder / log-domain decoder with a highlight-mask blend (a peer of the paper's table).

Reference: G. Eilertsen, J. Kronander, G. Denes, R. K. Mantiuk and J. Unger, "HDR image reconstruction from a single
exposure using deep CNNs", ACM Transactions on Graphics 36(6), article 178 (SIGGRAPH Asia 2017), arXiv:1710.07480.
Re-implemented from the paper (the hybrid dynamic range autoencoder, its skip-connection domain transformation and
the blend of Eq. 1); the authors' released TensorFlow code (github.com/gabrieleilertsen/hdrcnn, ``network.py``) was
read for the details (normalisation layers, initialisations).

Structure (``W = width`` = 64; VGG16 widths W, 2W, 4W, 8W, 8W)::

    encoder (VGG16 conv1_1 .. conv5_3 + ReLU, 2x2 max pools; input ImageNet-standardised RGB)
        s1 = conv1_2 (W, 1/1)  s2 = conv2_2 (2W, 1/2)  s3 = conv3_3 (4W, 1/4)  s4 = conv4_3 (8W, 1/8)
        s5 = conv5_3 (8W, 1/16)  -> pool5 (1/32)
    latent: z = ReLU(BN(conv3x3(8W -> 8W)(pool5)))                       the extra conv on top of VGG16
    decoder (log domain): every deconv is 4x4 stride 2 + BN + ReLU, initialised to bilinear up-sampling
        d = deconv(z) 8W        ; d = fuse(d, s5) ; d = deconv(d) 8W ; d = fuse(d, s4) ; d = deconv(d) 4W
        d = fuse(d, s3) ; d = deconv(d) 2W ; d = fuse(d, s2) ; d = deconv(d) W ; d = fuse(d, s1)
        d = ReLU(BN(conv1x1(W -> 3))) ; y_log = fuse(d, log(f^-1(x) + eps))
    fuse(d, s) = conv1x1(cat(d, T(s))) initialised to d + T(s)            the paper's skip fusion (1x1 conv)
    T(s) = log((c s)^2 + eps), eps = 1/255                                 domain transformation of the skips:
        display-referred encoder features -> log decoder domain (``c`` see below)
    output (Eq. 1):  H = (1 - alpha) f^-1(x) + alpha (exp(y_log) - eps),
                     alpha = max(0, max_c(x) - tau) / (1 - tau), tau = 0.95, f^-1(x) = x^gamma, gamma = 2

Domains. Input: ``(N, 3, H, W)`` display-referred LDR in [0, 1]. The network predicts log HDR ``y_log`` (the paper's
log domain, ``log(H + eps)``); :meth:`forward` converts it to linear (``exp(y_log) - eps``, clamped at 0) and blends
it with the linearised input, so the output (``out_domain = 'linear'``) is linear HDR ``(N, 3, H, W)``, >= 0, with
the LDR's white at ``f^-1(1) = 1``; highlights are unbounded above. Where ``alpha = 0`` (no channel above ``tau``) the
output *is* the linearised input ``f^-1(x)``; only the near-saturated pixels come from the network, as in the paper.
``transfer='srgb'`` replaces the paper's ``f^-1(x) = x^2`` by the sRGB curve (in the blend and in the input skip).

Encoder weights: random (PyTorch's default initialisation) unless ``vgg16_path`` names torchvision's ImageNet VGG16
checkpoint file (``vgg16-397923af.pth``, the file of ``torchvision.models.VGG16_Weights.IMAGENET1K_V1``); nothing is
ever downloaded. The paper initialises the encoder with VGG16 classification weights (the released training code
links Places365 ones) and pre-trains on simulated HDR; torchvision's weights expect ImageNet-standardised input, which
the encoder applies. The released VGG works on 0..255 Caffe input and divides its features by 255 before the domain
transformation; for standardised input the features are ``1 / (255 std)`` of those, so ``c = std = 0.226`` (mean of
torchvision's ImageNet channel std) keeps the transformation's scale.

Any size: reflect-padded (:func:`~llmhdr_basicsr.archs.arch_util.pad_to_multiple`) to a multiple of 32 and
at least 64 (so the latent is at least 2 x 2 and batch norm has statistics at batch size 1), cropped back.

Parameters of the default configuration (W = 64): 29,443,358 (14,714,688 of them the VGG16 encoder), identical to the
released ``network.py`` (same layers, biases kept in the deconvs before batch norm as there). Paper's count: not
verified -- only the paper's abstract was readable here, and it states none.

Inferred: ReLU after the decoder's batch norms (the released code's "leaky ReLU" has slope 0); the 1x1 output conv is
followed by BN + ReLU before the final fusion (as released); ``y_log`` is clamped at 30 before ``exp`` so that an
untrained network cannot overflow to inf (which would turn ``alpha = 0`` pixels into NaN).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from .arch_util import pad_to_multiple
from .itmo_baseline_arch import TRANSFERS, linearize

#: VGG16's conv stages: (channels at width 64, convs per stage).
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
#: Indices of the 13 convs in torchvision's ``vgg16().features`` (keys ``features.<i>.weight`` / ``.bias``).
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Scale of the encoder features in the skip domain transformation (see the module docstring).
FEATURE_SCALE = 0.226
EPS = 1.0 / 255.0
MAX_LOG = 30.0
VGG16_HINT = (
    "torchvision's ImageNet VGG16 checkpoint (vgg16-397923af.pth, the file of "
    'torchvision.models.VGG16_Weights.IMAGENET1K_V1)'
)


def highlight_mask(x: torch.Tensor, tau: float = 0.95) -> torch.Tensor:
    """The paper's blend weight ``alpha = max(0, max_c(x) - tau) / (1 - tau)`` (Eq. 1), clamped to [0, 1].

    Args:
        x: ``(N, C, H, W)`` display-referred LDR in [0, 1].
        tau: saturation threshold (0.95 in the paper).

    Returns:
        ``(N, 1, H, W)`` in [0, 1]: 0 for pixels whose every channel is at most ``tau``, 1 for clipped ones.
    """
    return ((x.amax(dim=1, keepdim=True) - tau) / (1.0 - tau)).clamp(0.0, 1.0)


def _bilinear_deconv(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    """4x4 stride-2 transposed conv initialised to bilinear 2x up-sampling of channel i to channel i (released code)."""
    deconv = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1)
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    with torch.no_grad():
        deconv.weight.zero_()
        for i in range(min(in_ch, out_ch)):
            deconv.weight[i, i] = taps[:, None] * taps[None, :]
        deconv.bias.zero_()
    return deconv


class SkipFusion(nn.Module):
    """``conv1x1(cat(d, T(s)))``, ``T(s) = log(s' + eps)``, initialised to the sum ``d + T(s)`` (the paper's fusion).

    Args:
        num_ch: channels of ``d`` and of the skip (equal).
    """

    def __init__(self, num_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * num_ch, num_ch, 1)
        with torch.no_grad():
            eye = torch.eye(num_ch)[:, :, None, None]
            self.conv.weight.copy_(torch.cat([eye, eye], dim=1))
            self.conv.bias.zero_()

    def forward(self, d: torch.Tensor, skip_linear: torch.Tensor) -> torch.Tensor:
        """``d`` in the log domain, ``skip_linear`` already mapped to linear (``(c s)^2`` or ``f^-1(x)``), >= 0."""
        return self.conv(torch.cat([d, torch.log(skip_linear + EPS)], dim=1))


def _deconv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(_bilinear_deconv(in_ch, out_ch), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


@ARCH_REGISTRY.register()
class HDRCNN(nn.Module):
    """Eilertsen et al.'s HDR-CNN: VGG16 encoder, log-domain deconv decoder, Eq. 1 highlight blend (module docstring).

    Args:
        width: ``W``, channels of VGG16's first stage (64; other values only with random encoder weights).
        tau: saturation threshold of the blend (0.95).
        transfer: the inverse camera curve ``f^-1`` of the blend and the input skip: ``'gamma'`` (the paper's
            ``x^gamma``), ``'srgb'`` (IEC 61966-2-1) or ``'none'``.
        gamma: exponent of ``'gamma'`` (2 in the paper).
        vgg16_path: local file of torchvision's ImageNet VGG16 weights to initialise the encoder; None = random.
    """

    out_domain = 'linear'

    def __init__(
        self,
        width: int = 64,
        tau: float = 0.95,
        transfer: str = 'gamma',
        gamma: float = 2.0,
        vgg16_path: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= tau < 1.0:
            raise ValueError(f'HDRCNN: tau must lie in [0, 1), got {tau}')
        if transfer not in TRANSFERS:
            raise ValueError(f'HDRCNN: transfer must be one of {TRANSFERS}, got {transfer!r}')
        if vgg16_path is not None and width != 64:
            raise ValueError(f'HDRCNN: vgg16_path needs width=64 (the VGG16 widths), got width={width}')
        self.tau, self.transfer, self.gamma = float(tau), transfer, float(gamma)
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # encoder: the conv layers of VGG16 (conv1_1 .. conv5_3), ReLU after each; pools in forward
        chans = [c * width // 64 for c, _ in VGG16_STAGES]
        self.stages = nn.ModuleList()
        in_ch = 3
        for ch, (_, n) in zip(chans, VGG16_STAGES):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers += [nn.Conv2d(in_ch, ch, 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = ch
            self.stages.append(nn.Sequential(*layers))
        top = chans[-1]
        # latent layer on top of pool5: conv3x3 + BN + ReLU
        self.latent = nn.Sequential(nn.Conv2d(top, top, 3, padding=1), nn.BatchNorm2d(top), nn.ReLU(inplace=True))
        # decoder: deconv to 1/16, then per scale: fuse with the encoder skip, deconv to the next scale
        self.deconvs = nn.ModuleList([_deconv_block(top, chans[4])])  # 1/32 -> 1/16 (8W)
        self.fusions = nn.ModuleList()
        for level in (4, 3, 2, 1):  # skips s5, s4, s3, s2 -> deconvs to 1/8, 1/4, 1/2, 1/1
            self.fusions.append(SkipFusion(chans[level]))
            self.deconvs.append(_deconv_block(chans[level], chans[level - 1]))
        self.fusions.append(SkipFusion(chans[0]))  # s1 at full resolution
        self.head = nn.Sequential(nn.Conv2d(chans[0], 3, 1), nn.BatchNorm2d(3), nn.ReLU(inplace=True))
        self.fuse_input = SkipFusion(3)  # the final skip from the (linearised) input
        if vgg16_path is not None:
            self.load_vgg16(vgg16_path)

    # ------------------------------------------------------------------------------------------------------ weights
    def encoder_convs(self) -> list[nn.Conv2d]:
        """The 13 encoder convs in VGG16 order (conv1_1 .. conv5_3)."""
        return [m for stage in self.stages for m in stage if isinstance(m, nn.Conv2d)]

    def load_vgg16(self, path: str) -> None:
        """Copy torchvision's ImageNet VGG16 conv weights (``features.<i>.weight`` / ``.bias``) into the encoder.

        Raises:
            FileNotFoundError: ``path`` is not a file.
            ValueError: the file is not a torch checkpoint, or not a VGG16 state dict.
        """
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f'HDRCNN: vgg16_path {str(path)!r} is not a file; put {VGG16_HINT} at that path, or leave vgg16_path '
                'unset for a randomly initialised encoder'
            )
        try:
            state = torch.load(file, map_location='cpu', weights_only=True)
        except Exception as err:  # any unpickling failure: one line that names the file (torch's text is long)
            raise ValueError(
                f'HDRCNN: vgg16_path {str(path)!r} is not a readable torch checkpoint ({type(err).__name__}); it must '
                f'be {VGG16_HINT}'
            ) from None
        if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
            state = state['state_dict']
        if not isinstance(state, dict):
            raise ValueError(f'HDRCNN: vgg16_path {str(path)!r} holds a {type(state).__name__}, not {VGG16_HINT}')
        state = {k.removeprefix('module.'): v for k, v in state.items()}
        with torch.no_grad():
            for conv, idx in zip(self.encoder_convs(), TORCHVISION_CONV_INDICES):
                for name in ('weight', 'bias'):
                    key, target = f'features.{idx}.{name}', getattr(conv, name)
                    value = state.get(key)
                    if not isinstance(value, torch.Tensor) or value.shape != target.shape:
                        got = 'missing' if value is None else f'of shape {tuple(getattr(value, "shape", ()))}'
                        raise ValueError(
                            f'HDRCNN: vgg16_path {str(path)!r} is not {VGG16_HINT}: {key} is {got}, expected '
                            f'{tuple(target.shape)}'
                        )
                    target.copy_(value.to(target.dtype))

    # ------------------------------------------------------------------------------------------------------ forward
    def linearize(self, x: torch.Tensor) -> torch.Tensor:
        """``f^-1(x)``: the inverse camera curve of the blend and the input skip (``x^2`` in the paper)."""
        return linearize(x, self.transfer, self.gamma)

    def log_hdr(self, x: torch.Tensor) -> torch.Tensor:
        """The network's log-HDR prediction ``y_log`` (``(N, 3, H, W)``, any size; ``log(H + eps)`` domain)."""
        xp, (h, w) = pad_to_multiple(x, 32, min_size=64, mode='reflect')
        feat = (xp - self.mean) / self.std  # torchvision's VGG16 input standardisation
        skips = []
        for i, stage in enumerate(self.stages):
            if i:
                feat = F.max_pool2d(feat, 2)
            feat = stage(feat)
            skips.append(feat)  # s1 .. s5: the activations before each pool
        d = self.deconvs[0](self.latent(F.max_pool2d(feat, 2)))
        for fusion, deconv, skip in zip(self.fusions, self.deconvs[1:], skips[:0:-1]):  # s5, s4, s3, s2
            d = deconv(fusion(d, (FEATURE_SCALE * skip) ** 2))  # T(s) = log((c s)^2 + eps)
        d = self.fusions[-1](d, (FEATURE_SCALE * skips[0]) ** 2)
        y_log = self.fuse_input(self.head(d), self.linearize(xp))  # final skip: log(f^-1(x) + eps)
        return y_log[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct: the log-HDR prediction, to linear, blended with the linearised input by Eq. 1.

        Args:
            x: ``(N, 3, H, W)`` float32 display-referred LDR in [0, 1], any H, W.

        Returns:
            ``(N, 3, H, W)`` linear HDR >= 0, the LDR's white at 1 (see the module docstring).
        """
        if x.dim() != 4 or x.size(1) != 3:
            raise ValueError(f'HDRCNN: expected input (N, 3, H, W), got {tuple(x.shape)}')
        pred = (torch.exp(self.log_hdr(x).clamp(max=MAX_LOG)) - EPS).clamp(min=0.0)  # log HDR -> linear
        alpha = highlight_mask(x, self.tau)
        return (1.0 - alpha) * self.linearize(x) + alpha * pred  # Eq. 1
