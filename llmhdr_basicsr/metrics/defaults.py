"""Protocol defaults of the HDR metrics, importable without torch or BasicSR (``llmhdr-eval --help`` needs them).

:mod:`llmhdr_basicsr.metrics.hdr_metric` defines the same values (tests/test_cli.py checks that they agree); the
metric functions read theirs, the command line shows these.
"""

ALIGN_MODES = ('geomean', 'median', 'max', 'none')
DEFAULT_ALIGN = 'geomean'
DEFAULT_PEAK_NITS = 1000.0  # cd/m² given to the ground truth's `DEFAULT_PERCENTILE` luminance
DEFAULT_PERCENTILE = 99.9
CVVDP_DISPLAY = 'standard_hdr_linear'
