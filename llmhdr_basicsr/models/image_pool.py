"""ImagePool: the history of generated images that CycleGAN's discriminators learn from (Shrivastava et al. 2017)."""

from __future__ import annotations

import random

import torch


class ImagePool:
    """A buffer of up to ``pool_size`` previously generated images.

    ``query(images)`` returns a batch of the same size in which each image is, with probability 0.5 once the pool is
    full, swapped for a random older one (which the new image then replaces). This reduces discriminator oscillation
    (CycleGAN Sec. 4, pool of 50). ``pool_size=0`` returns the input unchanged. The pool stores detached tensors on
    the device they came from; :meth:`state_dict` / :meth:`load_state_dict` carry it through a checkpoint (the
    training state), so a resumed run sees the same history (the reference implementation starts empty again).

    Args:
        pool_size: capacity in images.
    """

    def __init__(self, pool_size: int = 50):
        self.pool_size = int(pool_size)
        self.images: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images (N, C, H, W), any value range. Returns: (N, C, H, W), detached, from the same domain."""
        images = images.detach()
        if self.pool_size == 0:
            return images
        out = []
        for image in images:
            image = image.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image)
                out.append(image)
            elif random.random() > 0.5:
                idx = random.randrange(self.pool_size)
                out.append(self.images[idx].clone())
                self.images[idx] = image
            else:
                out.append(image)
        # Crops of different sizes cannot be batched: fall back to the fresh images then.
        if any(o.shape != out[0].shape for o in out):
            return images
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        """``{'pool_size': int, 'images': [(1, C, H, W) CPU tensors]}``: the pool as it is now."""
        return {'pool_size': self.pool_size, 'images': [image.cpu() for image in self.images]}

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        """Restore :meth:`state_dict`'s output; images go to ``device`` (default: where they were loaded)."""
        self.pool_size = int(state['pool_size'])
        self.images = [image if device is None else image.to(device) for image in state['images']]
