"""Registering modules of llmhdr_basicsr.losses (imported explicitly, not by folder scan)."""

from . import (  # noqa: F401
    clip_contrastive_loss,
    lpips_loss,
    perception_loss,  # noqa: F401
    sam_semantic_loss,
)
