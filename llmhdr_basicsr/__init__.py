"""llmhdr_basicsr: LLM-HDR / CycleHDR unpaired LDR->HDR reconstruction as a BasicSR plugin.

Importing this package registers its architectures, datasets, losses, metrics and models in BasicSR's registries
(``ARCH_REGISTRY``, ``DATASET_REGISTRY``, ``LOSS_REGISTRY``, ``METRIC_REGISTRY``, ``MODEL_REGISTRY``) through
:mod:`llmhdr_basicsr.plugin`. The start-up hook installed with the package imports that module whenever ``basicsr``
is imported, so BasicSR's own unchanged ``train.py`` / ``test.py`` find every class (``BASICSR_PLUGINS_DISABLE=1``
switches that off).

One exception keeps the command-line tools quick: when the interpreter runs ``llmhdr-infer``, ``llmhdr-tonemap``,
``llmhdr-eval`` or ``llmhdr-perceive`` (console script or ``python -m``), the package is imported without BasicSR or
torch (about 6 s of imports); they are loaded when a tool needs them, and the start-up hook registers the plugin at
that moment.

Tensor conventions used throughout (each function's docstring repeats what applies to it):

- LDR: ``(N, 3, H, W)`` float32 RGB, display-referred (sRGB-encoded), in [0, 1];
- HDR: ``(N, 3, H, W)`` float32 *linear* RGB (Rec.709 primaries), >= 0, relative scale unless stated otherwise;
- numpy images are ``(H, W, 3)`` RGB (not OpenCV's BGR) with the same value conventions.
"""

import os as _os
import sys as _sys

from .utils import quiet as _quiet
from .version import __version__

#: Tools that parse their arguments before importing BasicSR and torch (console scripts and their modules).
LIGHT_TOOLS = {
    'llmhdr-infer': 'llmhdr_basicsr.infer',
    'llmhdr-tonemap': 'llmhdr_basicsr.tonemap_cli',
    'llmhdr-eval': 'llmhdr_basicsr.evaluate',
    'llmhdr-perceive': 'llmhdr_basicsr.perceive',
}


def _light_tool_starting() -> bool:
    """True while the interpreter starts one of :data:`LIGHT_TOOLS` (and BasicSR is not loaded yet)."""
    if 'basicsr' in _sys.modules or not any(type(f).__name__ == 'BasicsrImportHook' for f in _sys.meta_path):
        return False  # without the start-up hook nothing would register the plugin later: register now
    script = _os.path.basename(_sys.argv[0]) if _sys.argv and _sys.argv[0] else ''
    if script in LIGHT_TOOLS:
        return True
    argv = list(getattr(_sys, 'orig_argv', ()))
    return '-m' in argv[:-1] and argv[argv.index('-m') + 1] in LIGHT_TOOLS.values()


_quiet.install()  # logging / warning filters for third-party notices we report ourselves (standard library only)
if not _light_tool_starting():
    from . import plugin  # noqa: F401  (registration side effects)

__all__ = ['__version__']
