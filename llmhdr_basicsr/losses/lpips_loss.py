"""Optional LPIPS perceptual loss (not one of the paper's six terms; an extra for ablations or supervised warm-up).

Same offline backbone loading as the metric (:func:`llmhdr_basicsr.metrics.lpips_metric.build_lpips`): the linear
heads ship in the ``lpips`` wheel, the ImageNet trunk comes from a local torchvision checkpoint (``weights`` option
> ``LLMHDR_LPIPS_BACKBONE``). The whole network is frozen; gradients reach the prediction only.
"""

from __future__ import annotations

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from llmhdr_basicsr.metrics.lpips_metric import LPIPS_ENV_VAR, build_lpips, lpips_weights_hint
from llmhdr_basicsr.utils.weights import resolve_weights, warn_disabled


@LOSS_REGISTRY.register()
class LPIPSLoss(nn.Module):
    """LPIPS distance between display-referred images, averaged over the batch.

    Args:
        loss_weight: multiplier of the loss. Default: 1.0.
        net: LPIPS trunk, ``'alex'`` | ``'vgg'`` | ``'squeeze'``. Default: ``'alex'``.
        weights: local torchvision checkpoint of the trunk (e.g. ``alexnet-owt-7be5be79.pth``); None:
            ``$LLMHDR_LPIPS_BACKBONE``.
        allow_missing: with no weights configured, or a file that does not exist or is not a backbone, switch off
            (``enabled = False``, one warning naming the file, forward returns 0) instead of raising.

    Attributes:
        enabled (bool): False when the loss switched itself off.
    """

    def __init__(
        self, loss_weight: float = 1.0, net: str = 'alex', weights: str | None = None, allow_missing: bool = False
    ) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.enabled = True
        self.lpips: nn.Module | None = None
        try:
            path = resolve_weights(
                weights,
                LPIPS_ENV_VAR,
                f'LPIPS backbone weights for net={net!r}',
                lpips_weights_hint('train.lpips_opt.weights'),
                allow_missing=allow_missing,
            )
            if path is None:
                self._disable(f'no backbone weights configured; set train.lpips_opt.weights or {LPIPS_ENV_VAR}')
                return
            self.lpips = build_lpips(net, path, option='train.lpips_opt.weights')
        except (FileNotFoundError, ValueError) as err:  # a configured file that is missing or not a backbone
            if not allow_missing:
                raise
            self._disable(f'{err} (allow_missing: true)')

    def _disable(self, reason: str) -> None:
        """Switch the loss off with its one warning (``allow_missing``)."""
        self.enabled = False
        self.lpips = None
        warn_disabled('LPIPSLoss', reason)

    def train(self, mode: bool = True) -> LPIPSLoss:
        """Switch the module's mode; the frozen LPIPS network always stays in eval mode (no dropout)."""
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS loss.

        Args:
            pred: ``(N, 3, H, W)`` display-referred RGB in [0, 1] (e.g. mu-law HDR or sRGB LDR); differentiable.
            target: ``(N, 3, H, W)`` reference in the same space and range.

        Returns:
            Scalar tensor, ``loss_weight * mean_n LPIPS(pred_n, target_n)`` (0 when disabled).
        """
        if not self.enabled:
            return pred.new_zeros(())
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f'LPIPSLoss: need (N, 3, H, W) pred and target of one shape, got {tuple(pred.shape)}, '
                             f'{tuple(target.shape)}')  # fmt: skip
        return self.loss_weight * self.lpips(pred * 2 - 1, target * 2 - 1).mean()
