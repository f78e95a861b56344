"""The "LLM" perception loss of LLM-HDR (L_llm, v2/v3) = the heuristic loss of CycleHDR (L_heu, v4).

Paper (method.md §6.6): a perception module marks artifact, over-exposed and under-exposed pixels of the generator
output, and the loss is the fraction of such pixels, L = (N_af + N_ox + N_ux) / N_total. Pixel counts have no gradient,
so the counts are replaced by the *soft* maps of :mod:`llmhdr_basicsr.perception.heuristic` (method.md §3.4)::

    L_heu = w_af * mean(M_af(y, ref)) + w_ox * mean(M_ox(y)) + w_ux * mean(M_ux(y))

``y`` is the display-referred output (mu-law HDR of G_Y, or the LDR of G_X) and ``ref`` the generator input mapped to
the same display encoding (the artifact map counts detail the input does not have). Optional ``prior`` maps (e.g. the
cached answers of a VLM about the *input*, channels [artifact, over, under]) re-weight each map spatially by
``1 + prior_gain * prior``, so regions the VLM flagged cost more.
"""

from __future__ import annotations

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from llmhdr_basicsr.perception.heuristic import heuristic_maps


@LOSS_REGISTRY.register()
class LLMPerceptionLoss(nn.Module):
    """Soft artifact / over-exposure / under-exposure fraction of the output (L_llm / L_heu).

    Args:
        loss_weight: lambda_llm (method.md §6 suggests starting at 1 and tuning; it can fight the adversarial term).
        artifact_weight, over_weight, under_weight: weights of the three fractions.
        tau: exposure threshold of the over/under maps (0.95, SingleHDR(W)).
        prior_gain: gain of the optional prior maps (0 ignores them).
        backend: ``'heuristic'`` (the only on-line backend; VLM answers enter as ``prior`` maps from the cache).
        **map_kwargs: further arguments of :func:`~llmhdr_basicsr.perception.heuristic.heuristic_maps`.
    """

    def __init__(
        self,
        loss_weight: float = 1.0,
        artifact_weight: float = 1.0,
        over_weight: float = 1.0,
        under_weight: float = 1.0,
        tau: float = 0.95,
        prior_gain: float = 1.0,
        backend: str = 'heuristic',
        **map_kwargs,
    ):
        super().__init__()
        if backend != 'heuristic':
            raise ValueError(
                f"llm_opt.backend {backend!r}: the loss runs on-line with the 'heuristic' backend; VLM answers are "
                'read from the perception cache (datasets.train.maps_cache) and enter as prior maps'
            )
        self.loss_weight = loss_weight
        self.weights = (artifact_weight, over_weight, under_weight)
        self.tau = tau
        self.prior_gain = prior_gain
        self.map_kwargs = map_kwargs

    def forward(
        self, output: torch.Tensor, reference: torch.Tensor | None = None, prior: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args:
            output: ``(N, 3, H, W)`` display-referred output in [0, 1].
            reference: ``(N, 3, H, W)`` display-referred input in the same encoding, or None.
            prior: ``(N, 3, H, W)`` maps in [0, 1] (artifact, over, under), or None.

        Returns:
            Scalar loss, ``loss_weight * sum_k w_k * mean(M_k)``.
        """
        maps = heuristic_maps(output, reference=reference, tau=self.tau, **self.map_kwargs).stack()
        if prior is not None and self.prior_gain:
            maps = maps * (1 + self.prior_gain * prior.to(maps))
        per_map = maps.mean(dim=(0, 2, 3))
        weights = per_map.new_tensor(self.weights)
        return self.loss_weight * (weights * per_map).sum()
