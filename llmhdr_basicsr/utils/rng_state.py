"""Exact resume: the random state of a training run, saved with each training state and restored on resume.

BasicSR's training state holds the epoch, the iteration, optimizers and schedulers. A resumed run therefore
continues at the right iteration but draws other random numbers (crops, HDR partners, image-pool swaps) and restarts
the interrupted epoch from its first batch, so its losses differ from those of an uninterrupted run. This module
adds what is missing:

- :func:`capture_rng_state` / :func:`restore_rng_state`: Python's ``random``, NumPy's global state, torch's CPU
  generator and, when CUDA is in use, every CUDA generator;
- the position in the data stream (:class:`DataPosition`): the torch generator state at the start of the current
  epoch (from which the DataLoader draws its workers' base seed) and the number of batches already taken from it.
  On resume, :class:`ResumablePrefetcher` restores that generator state before the epoch's loader is created and
  skips the batches already used (by dropping their indices in :class:`ResumableSampler` without workers, by
  loading and discarding them with workers, so every worker's random stream advances exactly as before), then
  restores the state of the checkpoint;
- the image pools of the discriminators (:meth:`~llmhdr_basicsr.models.image_pool.ImagePool.state_dict`).

:func:`training_state_extras` and :func:`restore_training_extras` are what a model's ``save_training_state`` /
``resume_training`` call; :mod:`llmhdr_basicsr.utils.train_hooks` installs the prefetcher and sampler in BasicSR's
training loop and keeps validation from consuming random numbers (:func:`preserved_rng_state`).

Exact for one training process with BasicSR's default loader settings (``prefetch_mode: ~``,
``persistent_workers: false``); with ``prefetch_mode: cpu`` (a loader thread) or persistent workers the resumed run is
statistically equivalent only. Distributed runs save rank 0's state only, so their ranks resume as in BasicSR
(nothing restored: every rank keeps its own seed instead of taking rank 0's random streams).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.data.prefetch_dataloader import CPUPrefetcher


def capture_rng_state() -> dict:
    """The state of every global random generator a training step may use.

    Returns:
        ``{'python': ..., 'numpy': ..., 'torch': (N,) uint8 CPU tensor[, 'cuda': [uint8 tensor per device]]}``.
    """
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Set the global generators to a state of :func:`capture_rng_state` (tensors may come back on any device)."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block without changing the global random state (validation must not shift training's random numbers)."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


class DataPosition:
    """Where the training loop is in its data stream (one instance, :data:`POSITION`).

    Attributes:
        active: True once :class:`ResumablePrefetcher` drives the loop.
        epoch: the sampler's epoch.
        epoch_torch_state: torch CPU generator state just before the current epoch's loader iterator was created.
        batches: batches taken from the current epoch so far.
        pending: what a resume asks for (``batches``, ``epoch_torch_state``, ``rng``), applied at the next reset.
    """

    def __init__(self) -> None:
        self.active = False
        self.epoch = 0
        self.epoch_torch_state: torch.Tensor | None = None
        self.batches = 0
        self.pending: dict | None = None

    def state(self) -> dict | None:
        if not self.active or self.epoch_torch_state is None:
            return None
        return {'epoch': self.epoch, 'batches': self.batches, 'epoch_torch_state': self.epoch_torch_state.clone()}


POSITION = DataPosition()


class ResumableSampler(EnlargedSampler):
    """BasicSR's ``EnlargedSampler`` that can leave out the first ``skip`` indices of its next epoch (resume)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        POSITION.epoch = epoch

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class ResumablePrefetcher(CPUPrefetcher):
    """BasicSR's ``CPUPrefetcher`` that records the data position and, after a resume, returns to it exactly."""

    def __init__(self, loader) -> None:
        super().__init__(loader)
        POSITION.active = True

    def reset(self) -> None:
        pending, POSITION.pending = POSITION.pending, None
        if pending is not None and pending.get('epoch_torch_state') is not None:
            torch.set_rng_state(pending['epoch_torch_state'].cpu())
        POSITION.epoch_torch_state = torch.get_rng_state()
        skip = int(pending.get('batches', 0)) if pending is not None else 0
        sampler = getattr(self.ori_loader, 'sampler', None)
        workers = getattr(self.ori_loader, 'num_workers', 0)
        by_index = skip and workers == 0 and isinstance(sampler, ResumableSampler)
        if by_index:
            sampler.skip = skip * int(self.ori_loader.batch_size)
        super().reset()
        if skip and not by_index:
            for _ in range(skip):
                if next(self.loader, None) is None:
                    break
        POSITION.batches = skip
        if pending is not None and 'rng' in pending:
            restore_rng_state(pending['rng'])

    def next(self):
        batch = super().next()
        if batch is not None:
            POSITION.batches += 1
        return batch


def training_state_extras(model) -> dict:
    """What a training state needs beyond BasicSR's for an exact resume (``model.save_training_state`` adds it).

    Returns:
        ``{'rng': capture_rng_state(), 'data_position': ... (inside BasicSR's loop), 'image_pools': {attr: state}}``.
    """
    from llmhdr_basicsr.models.image_pool import ImagePool

    extras = {'rng': capture_rng_state()}
    position = POSITION.state()
    if position is not None:
        extras['data_position'] = position
    pools = {name: value.state_dict() for name, value in vars(model).items() if isinstance(value, ImagePool)}
    if pools:
        extras['image_pools'] = pools
    return extras


def restore_training_extras(model, resume_state: dict) -> None:
    """Undo :func:`training_state_extras` on resume (``model.resume_training`` calls it; older states lack the keys).

    The image pools are restored at once; the random state is restored at once too (for use outside BasicSR's loop)
    and again by :class:`ResumablePrefetcher` once the data loader stands where the checkpoint was taken. Nothing is
    restored in a distributed run (the state is rank 0's).
    """
    from basicsr.utils.dist_util import get_dist_info

    if get_dist_info()[1] > 1:
        return
    for name, pool_state in (resume_state.get('image_pools') or {}).items():
        pool = getattr(model, name, None)
        if pool is not None:
            pool.load_state_dict(pool_state, device=getattr(model, 'device', None))
    if 'rng' in resume_state:
        restore_rng_state(resume_state['rng'])
        POSITION.pending = {'rng': resume_state['rng'], **(resume_state.get('data_position') or {})}
