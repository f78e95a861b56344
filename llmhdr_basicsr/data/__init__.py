"""Registering modules of llmhdr_basicsr.data (imported explicitly, not by folder scan)."""
