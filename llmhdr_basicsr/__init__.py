"""llmhdr_basicsr: LLM-HDR / CycleHDR unpaired LDR->HDR reconstruction as a BasicSR plugin.

The plugin registers its architectures, datasets, losses, metrics and models in BasicSR's registries
(``ARCH_REGISTRY``, ``DATASET_REGISTRY``, ``LOSS_REGISTRY``, ``METRIC_REGISTRY``, ``MODEL_REGISTRY``) through
:mod:`llmhdr_basicsr.plugin`. The start-up hook installed with the package imports that module whenever ``basicsr``
is imported, so BasicSR's own unchanged ``train.py`` / ``test.py`` find every class (``BASICSR_PLUGINS_DISABLE=1``
switches that off). ``import llmhdr_basicsr`` registers at once when basicsr is already loaded or the hook is not
active; otherwise it stays light (no basicsr, no torch) and registration happens when basicsr is imported, so the
command-line tools start quickly.

Tensor conventions used throughout (each function's docstring repeats what applies to it):

- LDR: ``(N, 3, H, W)`` float32 RGB, display-referred (sRGB-encoded), in [0, 1];
- HDR: ``(N, 3, H, W)`` float32 *linear* RGB (Rec.709 primaries), >= 0, relative scale unless stated otherwise;
- numpy images are ``(H, W, 3)`` RGB (not OpenCV's BGR) with the same value conventions.
"""

import sys as _sys

from .version import __version__


def _autoload_active() -> bool:
    """True when the start-up hook will import :mod:`llmhdr_basicsr.plugin` as soon as basicsr is imported."""
    return any(type(finder).__name__ == 'BasicsrImportHook' for finder in _sys.meta_path)


if 'basicsr' in _sys.modules or not _autoload_active():
    from . import plugin  # noqa: F401  (registration side effects)

__all__ = ['__version__']
