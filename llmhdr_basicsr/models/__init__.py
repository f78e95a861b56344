"""Registering modules of llmhdr_basicsr.models (imported explicitly, not by folder scan)."""
