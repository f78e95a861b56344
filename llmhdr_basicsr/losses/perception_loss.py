"""The "LLM" perception loss of LLM-HDR (L_llm, v2/v3) = the heuristic loss of CycleHDR (L_heu, v4).

Paper: a perception module marks artifact, over-exposed and under-exposed pixels of the generator output, and the
loss is the fraction of such pixels, L = (N_af + N_ox + N_ux) / N_total. Pixel counts have no gradient, so the counts
are the *soft* maps of :mod:`llmhdr_basicsr.perception.heuristic`::

    L_heu = w_af * mean(M_af) + w_ox * mean(M_ox) + w_ux * mean(M_ux)

What the maps judge depends on the output:

- an HDR reconstruction (LDR->HDR; pass ``hdr`` and ``ldr``) is judged *against its LDR input* by
  :func:`~llmhdr_basicsr.perception.heuristic.reconstruction_maps`: over-exposure = highlights clipped in the input
  that the reconstruction left near white, under-exposure = dark input pixels left at black, artifacts =
  checkerboard energy and extra local contrast outside the clipped regions, measured on the reconstruction
  re-rendered at the input's exposure against the input. Bright highlights are not punished for being bright; the
  optimum is a plausible HDR image (the ground truth scores better than the linearised input), and the linearised
  input gets a gradient wherever it has clipped or dark pixels;
- a display-referred output (HDR->LDR) is judged on its own by
  :func:`~llmhdr_basicsr.perception.heuristic.heuristic_maps`: saturated, crushed, and detail the reference lacks.

Optional ``prior`` maps (channels [artifact, over, under]) re-weight each map spatially by ``1 + prior_gain *
prior``, so regions a VLM flagged cost more: cached answers about the LDR *input* (``llmhdr-perceive``), or, with
``backend: vlm``, the answers of the training-time judge about the generator's own reconstructions
(:mod:`llmhdr_basicsr.perception.judge`; ``judge`` holds its options and the model runs it), which replace the input's
where an image has one.
"""

from __future__ import annotations

import inspect

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from llmhdr_basicsr.perception.heuristic import heuristic_maps, reconstruction_maps

_RECONSTRUCTION_KEYS = set(inspect.signature(reconstruction_maps).parameters) - {'hdr', 'ldr'}
_DISPLAY_KEYS = set(inspect.signature(heuristic_maps).parameters) - {'img', 'reference'}


@LOSS_REGISTRY.register()
class LLMPerceptionLoss(nn.Module):
    """Soft artifact / over-exposure / under-exposure fraction of the output (L_llm / L_heu).

    Args:
        loss_weight: lambda_llm.
        artifact_weight, over_weight, under_weight: weights of the three fractions.
        prior_gain: gain of the optional prior maps (0 ignores them).
        backend: ``'heuristic'`` (the soft maps alone, with the cached input maps as ``prior``) or ``'vlm'`` (the
            same loss, with a VLM judging the reconstructions during training; its answers enter as ``prior``).
        judge: with ``backend: vlm``: the judge's options, the VLM client's (``base_url``, ``model``, ``timeout``,
            ``max_tokens`` ...) and :data:`~llmhdr_basicsr.perception.judge.JUDGE_KEYS` (``judge_every``,
            ``judge_images``, ``queue_size``, ``map_size``, ``prompt``, ``render``, ``render_stops``).
        **map_kwargs: options of the map functions (``stops``, ``clip_tau``, ``artifact_margin`` ... of
            :func:`~llmhdr_basicsr.perception.heuristic.reconstruction_maps`; ``tau``, ``channel_reduce`` ... of
            :func:`~llmhdr_basicsr.perception.heuristic.heuristic_maps`); each function gets the ones it takes, a key
            that neither takes is an error.
    """

    def __init__(
        self,
        loss_weight: float = 1.0,
        artifact_weight: float = 1.0,
        over_weight: float = 1.0,
        under_weight: float = 1.0,
        prior_gain: float = 1.0,
        backend: str = 'heuristic',
        judge: dict | None = None,
        **map_kwargs,
    ):
        super().__init__()
        if backend not in ('heuristic', 'vlm'):
            raise ValueError(f"llm_opt.backend must be 'heuristic' or 'vlm', got {backend!r}")
        if backend == 'vlm' and not isinstance(judge, dict):
            raise ValueError(
                'llm_opt.backend vlm needs a judge block: judge: {base_url: http://127.0.0.1:8000/v1, model: NAME, '
                'judge_every: 50}'
            )
        if backend == 'heuristic' and judge is not None:
            raise ValueError("llm_opt.judge is set but llm_opt.backend is 'heuristic': set backend: vlm to use it")
        unknown = sorted(set(map_kwargs) - _RECONSTRUCTION_KEYS - _DISPLAY_KEYS)
        if unknown:
            raise TypeError(
                f'LLMPerceptionLoss: unknown option(s) {unknown}; the map options are '
                f'{sorted(_RECONSTRUCTION_KEYS | _DISPLAY_KEYS)}'
            )
        self.loss_weight = loss_weight
        self.backend, self.judge_opt = backend, (dict(judge) if judge is not None else None)
        self.weights = (artifact_weight, over_weight, under_weight)
        self.prior_gain = prior_gain
        self.reconstruction_kwargs = {k: v for k, v in map_kwargs.items() if k in _RECONSTRUCTION_KEYS}
        self.display_kwargs = {k: v for k, v in map_kwargs.items() if k in _DISPLAY_KEYS}

    def maps(
        self,
        output: torch.Tensor,
        reference: torch.Tensor | None = None,
        hdr: torch.Tensor | None = None,
        ldr: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(N, 3, H, W)`` [artifact, over, under] maps of the output, with gradient (see :meth:`forward`)."""
        if hdr is not None or ldr is not None:
            if hdr is None or ldr is None:
                raise ValueError('LLMPerceptionLoss: judging a reconstruction needs both hdr and ldr')
            return reconstruction_maps(hdr, ldr, **self.reconstruction_kwargs).stack()
        return heuristic_maps(output, reference=reference, **self.display_kwargs).stack()

    def forward(
        self,
        output: torch.Tensor,
        reference: torch.Tensor | None = None,
        prior: torch.Tensor | None = None,
        hdr: torch.Tensor | None = None,
        ldr: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            output: ``(N, 3, H, W)`` display-referred output in [0, 1] (for a reconstruction, its model-domain
                values; the maps use ``hdr``).
            reference: ``(N, 3, H, W)`` display outputs: the generator input in the same encoding (the artifact
                reference), or None.
            prior: ``(N, 3, H, W)`` maps in [0, 1] (artifact, over, under), or None.
            hdr: ``(N, 3, H, W)`` the reconstruction as linear HDR (white = 1): judge it against ``ldr``.
            ldr: ``(N, 3, H, W)`` the LDR input of the reconstruction, display-referred in [0, 1].

        Returns:
            Scalar loss, ``loss_weight * sum_k w_k * mean(M_k)``.
        """
        maps = self.maps(output, reference, hdr, ldr)
        if prior is not None and self.prior_gain:
            maps = maps * (1 + self.prior_gain * prior.to(maps))
        per_map = maps.mean(dim=(0, 2, 3))
        weights = per_map.new_tensor(self.weights)
        return self.loss_weight * (weights * per_map).sum()
