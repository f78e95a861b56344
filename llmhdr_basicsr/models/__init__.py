"""Registering modules of llmhdr_basicsr.models (imported explicitly, not by folder scan)."""

from . import cyclehdr_model, paired_hdr_model  # noqa: F401
