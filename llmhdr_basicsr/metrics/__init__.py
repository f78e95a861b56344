"""Registering modules of llmhdr_basicsr.metrics (imported explicitly, not by folder scan)."""
