"""Registering modules of llmhdr_basicsr.data (imported explicitly, not by folder scan)."""

from . import paired_hdr_dataset, single_image_dataset, unpaired_hdr_dataset  # noqa: F401
