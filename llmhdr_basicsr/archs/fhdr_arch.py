"""FHDR: feedback network for single-image HDR reconstruction (a peer of the paper's table).

Reference: Z. Khan, M. Khanna and S. Raman, "FHDR: HDR Image Reconstruction from a Single LDR Image using Feedback
Network", IEEE Global Conference on Signal and Information Processing (GlobalSIP) 2019, arXiv:1912.11463.
Re-implemented following the paper's architecture (feature extraction block, feedback block of dilated residual
dense blocks with a hidden state, HDR reconstruction block, ``num_iter`` iterations with an output each); the layer
widths and other details follow the authors' released code (github.com/mukulkhanna/FHDR, ``model.py``, read, not
copied).

Structure (``F = num_feat`` = 64, growth ``G = growth`` = 32, ``L = dense_layers`` = 4 layers per block, 3 blocks)::

    x' = 2 x - 1                                                           the released [-1, 1] input normalisation
    FEB:   f1 = ReLU(conv3x3(x'), reflect pad 1)   f_in = ReLU(conv3x3(f1))                 (once per input)
    for t = 0 .. num_iter-1:                                             (weights shared across iterations)
      FBB: u = conv1x1(cat(f_in, h_{t-1}))         h_{-1} = f_in          hidden state = the block's last output
           u = DRDB_3(DRDB_2(DRDB_1(u)))                                  each with its own (local) hidden state
           h_t = ReLU(conv3x3(u))                                         global feature fusion
      HRB: y_t = tanh(conv3x3(ReLU(conv3x3(h_t + f1))), reflect pad 1)    global residual to the first features
      output_t = out_scale * (y_t + 1) / 2
    DRDB(v, g_{t-1}): w = conv1x1(cat(v, g_{t-1})), g_{-1} = v            local feedback
                      L x [w = cat(w, ReLU(conv3x3 dilation 2 (w)))]      dense, G channels each, no bias
                      g_t = conv1x1(w) (F + L G -> F, no bias)            local feature fusion (+ v if local_residual)

Domains. Input: ``(N, 3, H, W)`` display-referred LDR in [0, 1] (the paper's LDRs are 8-bit images normalised to
[-1, 1]; the network does that mapping itself). Output (``out_domain = 'linear'``): linear HDR
``out_scale * (tanh + 1) / 2`` in ``(0, out_scale)``: the paper's targets are linear HDR normalised to [0, 1] and
mapped to [-1, 1] like the input (its loss compares mu-law tone maps, mu = 5000, of output and target). With the
paper's ``out_scale = 1`` the output cannot rise above 1, which is white under this project's protocol
(:mod:`~llmhdr_basicsr.models.paired_hdr_model`); set ``out_scale = 2^headroom`` (16 for ``train.headroom: 4``) to
cover the model domain.

``forward`` returns the last iteration's image, or with ``return_all=True`` the list of all ``num_iter`` (the released
training averages the loss over the iterations; :func:`~llmhdr_basicsr.models.hdr_base_model.unwrap_output` takes the
last element of a list or tuple, so models and inference see the final estimate).

Any size: no down-sampling, so no padding to a multiple; the two reflect pads of the paper work for any size
(:func:`~llmhdr_basicsr.archs.arch_util.reflect_pad`, replicate for a 1-pixel side).

Parameters of the default configuration (F = 64, G = 32, L = 4, local feedback): 571,267, identical to the released
``model.py``. Paper's count: not verified -- only the paper's abstract was readable here, and it states none.

Inferred / differences to the released code (not settled by the abstract):

- The hidden states live only inside one ``forward`` call (h_{-1} = f_in, g_{-1} = the block input, every call) and
  keep their gradient across iterations (back-propagation through the unrolled feedback loop, as the feedback network
  SRFBN that FHDR follows). The released code detaches them and carries them over from one batch to the next;
  ``detach_hidden=True`` reproduces the detaching.
- The released DRDB has no local residual despite its name; ``local_residual`` (default False, as released) adds it.
- The global feature fusion is one 3x3 conv on the last DRDB's output, as released.
- PyTorch's default initialisation (the released training script sets every conv weight to N(0, 0), i.e. zero,
  which we take for a slip).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from .arch_util import reflect_pad


class DilatedResidualDenseBlock(nn.Module):
    """The DRDB of FHDR: local feedback 1x1 conv, ``num_layers`` dilated dense 3x3 convs, 1x1 local fusion.

    Args:
        num_feat: ``F``, channels in and out.
        growth: ``G``, channels each dense layer adds.
        num_layers: ``L``, dense layers.
        local_feedback: concatenate the block's previous output (its hidden state) with its input, 1x1 conv back
            to ``F`` (the paper's local feedback).
        local_residual: add the block input to the fused output (not in the released code).
    """

    def __init__(
        self, num_feat: int, growth: int, num_layers: int, local_feedback: bool = True, local_residual: bool = False
    ) -> None:
        super().__init__()
        self.local_feedback, self.local_residual = local_feedback, local_residual
        self.compress = nn.Conv2d(2 * num_feat, num_feat, 1) if local_feedback else None
        self.dense = nn.ModuleList(
            nn.Conv2d(num_feat + i * growth, growth, 3, padding=2, dilation=2, bias=False) for i in range(num_layers)
        )
        self.fuse = nn.Conv2d(num_feat + num_layers * growth, num_feat, 1, bias=False)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        """``(N, F, H, W)`` -> ``(N, F, H, W)``; ``hidden`` is the previous iteration's output (None: use ``x``)."""
        w = x
        if self.compress is not None:
            w = self.compress(torch.cat([x, x if hidden is None else hidden], dim=1))
        for conv in self.dense:
            w = torch.cat([w, F.relu(conv(w))], dim=1)
        out = self.fuse(w)
        return out + x if self.local_residual else out


class FeedbackBlock(nn.Module):
    """FHDR's feedback block: 1x1 conv of ``cat(f_in, hidden)``, ``num_blocks`` DRDBs, 3x3 global feature fusion."""

    def __init__(
        self,
        num_feat: int,
        growth: int,
        num_layers: int,
        num_blocks: int,
        local_feedback: bool = True,
        local_residual: bool = False,
    ) -> None:
        super().__init__()
        self.compress_in = nn.Conv2d(2 * num_feat, num_feat, 1)
        self.blocks = nn.ModuleList(
            DilatedResidualDenseBlock(num_feat, growth, num_layers, local_feedback, local_residual)
            for _ in range(num_blocks)
        )
        self.gff = nn.Conv2d(num_feat, num_feat, 3, padding=1)

    def forward(
        self, f_in: torch.Tensor, hidden: torch.Tensor | None, local: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One iteration.

        Args:
            f_in: ``(N, F, H, W)`` low-level features (the same at every iteration).
            hidden: the block's previous output, or None at the first iteration (then ``f_in``).
            local: the previous outputs of the DRDBs (None at the first iteration).

        Returns:
            ``(out, local')``: ``out`` ``(N, F, H, W)`` is also the next hidden state.
        """
        u = self.compress_in(torch.cat([f_in, f_in if hidden is None else hidden], dim=1))
        new_local = []
        for block, g in zip(self.blocks, local):
            u = block(u, g)
            new_local.append(u)
        return F.relu(self.gff(u)), new_local


@ARCH_REGISTRY.register()
class FHDR(nn.Module):
    """FHDR: feature extraction, a feedback block iterated ``num_iter`` times, per-iteration reconstruction.

    Args:
        num_in_ch: input channels (3).
        num_out_ch: output channels (3).
        num_feat: ``F`` (64 in the paper).
        num_iter: feedback iterations (4 in the paper's main model); every one emits an image.
        growth: ``G``, channels per dense layer; None = ``num_feat // 2`` (32 at the paper's 64).
        dense_layers: ``L``, dense layers per DRDB (4).
        num_blocks: DRDBs in the feedback block (3).
        local_feedback: the DRDBs' own hidden states (the released code's "local feedback"); False drops their
            1x1 input convs.
        local_residual: residual connection around each DRDB (see the module docstring).
        detach_hidden: cut the gradient through the hidden states between iterations (the released code's
            behaviour).
        out_scale: the output is ``out_scale * (tanh + 1) / 2``; 1 as in the paper.
    """

    out_domain = 'linear'

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_iter: int = 4,
        growth: int | None = None,
        dense_layers: int = 4,
        num_blocks: int = 3,
        local_feedback: bool = True,
        local_residual: bool = False,
        detach_hidden: bool = False,
        out_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if num_iter < 1:
            raise ValueError(f'FHDR: num_iter must be >= 1, got {num_iter}')
        if out_scale <= 0:
            raise ValueError(f'FHDR: out_scale must be > 0, got {out_scale}')
        growth = max(1, num_feat // 2) if growth is None else growth
        self.num_in_ch, self.num_iter = num_in_ch, num_iter
        self.detach_hidden, self.out_scale = detach_hidden, float(out_scale)
        self.num_blocks = num_blocks
        # feature extraction block (FEB): two 3x3 convs; the first is reflect-padded
        self.feb1 = nn.Conv2d(num_in_ch, num_feat, 3)
        self.feb2 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        # feedback block (FBB)
        self.feedback = FeedbackBlock(num_feat, growth, dense_layers, num_blocks, local_feedback, local_residual)
        # HDR reconstruction block (HRB): two 3x3 convs, the last reflect-padded, tanh
        self.hrb1 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.hrb2 = nn.Conv2d(num_feat, num_out_ch, 3)

    def forward(self, x: torch.Tensor, return_all: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Reconstruct in ``num_iter`` feedback iterations.

        Args:
            x: ``(N, 3, H, W)`` float32 display-referred LDR in [0, 1], any H, W.
            return_all: return the list of every iteration's output (the last equals the default output).

        Returns:
            ``(N, 3, H, W)`` linear HDR in ``(0, out_scale)``, or a list of ``num_iter`` such tensors.
        """
        if x.dim() != 4 or x.size(1) != self.num_in_ch:
            raise ValueError(f'FHDR: expected input (N, {self.num_in_ch}, H, W), got {tuple(x.shape)}')
        f1 = F.relu(self.feb1(reflect_pad(2.0 * x - 1.0, 1, 1, 1, 1)))  # [0, 1] -> the paper's [-1, 1]
        f_in = F.relu(self.feb2(f1))
        hidden, local = None, [None] * self.num_blocks
        outputs: list[torch.Tensor] = []
        for _ in range(self.num_iter):
            hidden, local = self.feedback(f_in, hidden, local)
            # global residual: the feedback block's output plus the first-layer features, then the HRB
            y = self.hrb2(reflect_pad(F.relu(self.hrb1(hidden + f1)), 1, 1, 1, 1))
            outputs.append(self.out_scale * 0.5 * (torch.tanh(y) + 1.0))
            if self.detach_hidden:
                hidden, local = hidden.detach(), [g.detach() for g in local]
        return outputs if return_all else outputs[-1]
