"""Registering modules of llmhdr_basicsr.metrics (BasicSR does not scan metric folders)."""

from . import (
    hdr_metric,  # noqa: F401
    lpips_metric,  # noqa: F401
)
