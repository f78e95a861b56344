"""Interpreter start-up hook of llmhdr_basicsr (standard library only; imported by ``llmhdr_basicsr.pth``).

BasicSR 1.4.2 has no plugin mechanism and its unchanged ``basicsr/train.py`` imports ``basicsr`` before reading any
option, so the only moment where outside code can act is interpreter start. This module does two small things there:

1. **torchvision alias.** basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor``, removed in torchvision
   0.17. A finder at the *end* of ``sys.meta_path`` serves that name from ``torchvision.transforms._functional_tensor``
   (a torchvision that still has the real module wins, because the normal finders come first).
2. **Plugin auto-load.** A finder at the *front* of ``sys.meta_path`` wraps the loader of the top-level ``basicsr``
   package: once ``basicsr/__init__.py`` has run, every module named in the entry-point group ``basicsr.plugins``
   (and in ``$BASICSR_PLUGINS``, comma separated) is imported, so its ``@..._REGISTRY.register()`` decorators run
   before any ``build_*`` call of BasicSR's scripts.

``BASICSR_PLUGINS_DISABLE=1`` switches the auto-load off (the alias stays). Nothing heavy is imported here: the cost at
interpreter start is two finder objects.
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys

DISABLE_ENV = 'BASICSR_PLUGINS_DISABLE'
EXTRA_ENV = 'BASICSR_PLUGINS'
ENTRY_POINT_GROUP = 'basicsr.plugins'
_ALIASES = {'torchvision.transforms.functional_tensor': 'torchvision.transforms._functional_tensor'}


def autoload_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on')


class _AliasLoader(importlib.abc.Loader):
    """Builds the removed module as a copy of the public names of its replacement."""

    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        real = importlib.import_module(self.target)
        module.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith('__')})


class AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in _ALIASES:
            return importlib.util.spec_from_loader(fullname, _AliasLoader(_ALIASES[fullname]))
        return None


def plugin_modules() -> list:
    """Module names to import after basicsr: the ``basicsr.plugins`` entry points, then ``$BASICSR_PLUGINS``."""
    from importlib.metadata import entry_points

    names = [ep.value.split(':')[0].strip() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    names += [n.strip() for n in os.environ.get(EXTRA_ENV, '').split(',') if n.strip()]
    return list(dict.fromkeys(names))


def load_plugins() -> None:
    # Errors propagate on purpose: a half-registered plugin only shows up later as a confusing registry KeyError.
    for name in plugin_modules():
        importlib.import_module(name)


class _PluginLoadingLoader(importlib.abc.Loader):
    """Runs the real loader of ``basicsr``, then imports the plugins."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, item):  # is_package, get_code, get_resource_reader, ...
        return getattr(self._loader, item)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        load_plugins()


class BasicsrImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'basicsr':
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PluginLoadingLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Install both finders once per interpreter (the ``.pth`` and the PEP 829 ``.start`` file may both call it)."""
    if getattr(sys, '_llmhdr_basicsr_boot', False):
        return
    sys._llmhdr_basicsr_boot = True
    sys.meta_path.append(AliasFinder())
    if autoload_disabled():
        return
    sys.meta_path.insert(0, BasicsrImportHook())
    if 'basicsr' in sys.modules:  # basicsr came first (unusual): register right away
        load_plugins()


install()
