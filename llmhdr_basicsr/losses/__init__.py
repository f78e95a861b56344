"""Registering modules of llmhdr_basicsr.losses (imported explicitly, not by folder scan)."""
