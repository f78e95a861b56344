"""Helpers shared by every part of llmhdr_basicsr: HDR I/O, tone operators, devices, tiling."""
