"""Registering modules of llmhdr_basicsr.archs (imported explicitly, not by folder scan)."""
