"""llmhdr_basicsr: LLM-HDR / CycleHDR unpaired LDR->HDR reconstruction as a BasicSR plugin.

Importing this package registers its architectures, datasets, losses, metrics and models in BasicSR's registries
(``ARCH_REGISTRY``, ``DATASET_REGISTRY``, ``LOSS_REGISTRY``, ``METRIC_REGISTRY``, ``MODEL_REGISTRY``). The start-up
hook installed with the package does this automatically whenever ``basicsr`` is imported, so BasicSR's own unchanged
``train.py`` / ``test.py`` find every class (``BASICSR_PLUGINS_DISABLE=1`` switches that off).

Tensor conventions used throughout (each function's docstring repeats what applies to it):

- LDR: ``(N, 3, H, W)`` float32 RGB, display-referred (sRGB-encoded), in [0, 1];
- HDR: ``(N, 3, H, W)`` float32 *linear* RGB (Rec.709 primaries), >= 0, relative scale unless stated otherwise;
- numpy images are ``(H, W, 3)`` RGB (not OpenCV's BGR) with the same value conventions.
"""

from . import (  # noqa: F401  (registration side effects)
    archs,
    compat,  # noqa: F401  (must come first: patches basicsr 1.4.2 for CPU / current torch)
    data,
    losses,
    metrics,
    models,
)
from .version import __version__

__all__ = ['__version__']
