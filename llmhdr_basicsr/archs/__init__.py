"""Registering modules of llmhdr_basicsr.archs (imported explicitly, not by folder scan)."""

from . import feedback_unet_arch, itmo_baseline_arch, patchgan_arch  # noqa: F401
