"""Registration in BasicSR's registries without importing BasicSR first.

``import basicsr`` takes several seconds (it imports torchvision, scipy and every BasicSR module). The classical
operators of :mod:`llmhdr_basicsr.archs.itmo_baseline_arch` need none of it, so ``llmhdr-infer --arch LinearizeITMO``
should not pay for it. Classes decorated with :func:`register_arch` are registered in ``ARCH_REGISTRY`` at once when
BasicSR is already loaded, and otherwise as soon as it is (the start-up hook imports :mod:`llmhdr_basicsr.plugin`,
which calls :func:`flush`). To BasicSR the result is the same as ``@ARCH_REGISTRY.register()``.
"""

from __future__ import annotations

import sys

_PENDING: list[type] = []


def register_arch(cls: type) -> type:
    """Class decorator: register ``cls`` in BasicSR's ``ARCH_REGISTRY`` under its class name (now or when it loads)."""
    _PENDING.append(cls)
    if 'basicsr.utils.registry' in sys.modules:
        flush()
    return cls


def flush() -> None:
    """Register every pending class (idempotent; a name already registered for the same class is skipped)."""
    from basicsr.utils.registry import ARCH_REGISTRY

    while _PENDING:
        cls = _PENDING.pop(0)
        if ARCH_REGISTRY._obj_map.get(cls.__name__) is not cls:
            ARCH_REGISTRY.register(cls)
