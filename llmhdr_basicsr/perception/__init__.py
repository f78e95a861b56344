"""Perception backends: where an image shows artifacts, over- and under-exposure (LLM-HDR Sec. 3)."""
