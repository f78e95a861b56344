"""Learning-rate schedules BasicSR 1.4.2 lacks (it has MultiStepRestartLR and CosineAnnealingRestartLR only)."""

from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR, LRScheduler


def linear_decay_factor(progress: float, decay_start: float = 0.5) -> float:
    """Learning-rate multiplier at ``progress`` (fraction of the run done, in [0, 1]): 1 until ``decay_start``,
    then linear to 0 at the end. ``LinearDecayLR`` counts the fraction in iterations; ``benchmarks/quality.py`` in
    wall-clock time of its budget."""
    if progress < decay_start or decay_start >= 1.0:
        return 1.0
    return max(0.0, 1.0 - (progress - decay_start) / (1.0 - decay_start))


class LinearDecayLR(LambdaLR):
    """CycleGAN's schedule: constant learning rate, then linear decay to 0 (CycleGAN: 100 + 100 epochs).

    Stepped once per iteration by BasicSR's ``update_learning_rate``.

    Args:
        optimizer: the optimizer.
        total_iter: iteration at which the rate reaches 0.
        decay_start: first iteration of the decay (default: half of ``total_iter``).
    """

    def __init__(self, optimizer, total_iter: int, decay_start: int | None = None, last_epoch: int = -1):
        self.total_iter = int(total_iter)
        self.decay_start = int(self.total_iter // 2 if decay_start is None else decay_start)
        if not 0 <= self.decay_start < self.total_iter:
            raise ValueError(f'LinearDecayLR needs 0 <= decay_start < total_iter, got {decay_start}, {total_iter}')
        super().__init__(optimizer, self._factor, last_epoch=last_epoch)

    def _factor(self, it: int) -> float:
        return linear_decay_factor(it / self.total_iter, self.decay_start / self.total_iter)


def build_scheduler(optimizer, opt: dict) -> LRScheduler:
    """Build a scheduler from a ``train.scheduler`` block (``type`` + kwargs) for one optimizer."""
    from basicsr.models import lr_scheduler as bsr

    opt = dict(opt)
    kind = opt.pop('type')
    if kind in ('MultiStepLR', 'MultiStepRestartLR'):
        return bsr.MultiStepRestartLR(optimizer, **opt)
    if kind == 'CosineAnnealingRestartLR':
        return bsr.CosineAnnealingRestartLR(optimizer, **opt)
    if kind == 'LinearDecayLR':
        return LinearDecayLR(optimizer, **opt)
    raise ValueError(
        f'train.scheduler.type {kind!r} is unknown; choose MultiStepLR, MultiStepRestartLR, '
        'CosineAnnealingRestartLR or LinearDecayLR'
    )
