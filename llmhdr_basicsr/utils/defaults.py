"""Defaults shared by the command-line tools and the modules they configure, importable without torch.

The tools build their argument parsers from these values before importing anything heavy, so ``--help`` answers in
a fraction of a second; :mod:`llmhdr_basicsr.utils.tiling` and :mod:`llmhdr_basicsr.utils.tonemap` re-export them.
"""

#: Default tile edge and overlap (pixels) of the command-line tools.
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32

#: Preview tone operators by name (``--preview`` of the CLIs, validation previews): linear HDR -> display [0, 1].
PREVIEW_OPERATORS = ('reinhard', 'exposure', 'mu')
