"""Registering modules of llmhdr_basicsr.losses (imported explicitly, not by folder scan)."""

from . import perception_loss  # noqa: F401
