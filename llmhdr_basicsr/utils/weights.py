"""Local weight files and frozen pretrained backbones (CLIP, SAM, LPIPS): never downloads anything.

Every pretrained component of the method (the CLIP image encoder of L_con, SAM of L_sem, the AlexNet/VGG trunk of
LPIPS) is optional and comes from a file the user supplies (no package registry ships these
weights and nothing may be downloaded at run time). The lookup order is always

1. the explicit path from the YAML option or the command line;
2. the component's environment variable (e.g. ``LLMHDR_CLIP_CHECKPOINT``);
3. nothing: a :class:`FileNotFoundError` that says what to put where, or ``None`` when the caller allows the
   component to be missing (it then switches itself off and warns once).

A path that *is* configured but does not exist is an error of :func:`resolve_weights` in any case; the losses with
``allow_missing: true`` catch it (and a file that exists but is not a usable checkpoint) and switch themselves off
with one warning that names the file, the same as when nothing is configured: a training run does not stop for an
optional loss, and the warning says which path to fix.

Also here, shared by the three backbone users: :func:`freeze_module` (eval mode, no parameter gradients),
:func:`warn_disabled` (the single warning of a loss that switched itself off) and :class:`LRUCache` (the in-memory
cache of per-image results of the fixed LDR side).
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

#: Wrapper keys of common checkpoint layouts, unwrapped in this order (``{'state_dict': ...}`` from Lightning /
#: open_clip training, ``{'model': ...}`` from SAM/DeiT-style trainers, ``{'params': ...}`` from BasicSR).
WRAPPER_KEYS = ('state_dict', 'model', 'params')


def resolve_weights(
    path_option: str | os.PathLike | None,
    env_var: str | None,
    what: str,
    where_hint: str,
    allow_missing: bool = False,
) -> str | None:
    """Find a local weight file: explicit path > environment variable > None.

    Args:
        path_option: path from the YAML / CLI (``~`` and ``$VARS`` are expanded); None or '' = not set.
        env_var: name of the environment variable consulted when ``path_option`` is not set (None: no variable).
        what: what the file is, for messages, e.g. ``'CLIP checkpoint for ViT-B-32'``.
        where_hint: what to set where, e.g. ``'set train.clip_opt.checkpoint or LLMHDR_CLIP_CHECKPOINT to a local
            open_clip .pt/.bin/.safetensors file'``.
        allow_missing: when neither the option nor the variable is set, return None instead of raising.

    Returns:
        The absolute path of an existing file, or None (only with ``allow_missing`` and nothing configured).

    Raises:
        FileNotFoundError: nothing configured (and not ``allow_missing``), or the configured path does not exist or
            is not a file. The message names ``what``, the path and its source, and ``where_hint``.
    """
    source = None
    path = None
    if path_option not in (None, ''):
        path, source = str(path_option), 'option'
    elif env_var and os.environ.get(env_var, '').strip():
        path, source = os.environ[env_var].strip(), f'environment variable {env_var}'
    if path is None:
        if allow_missing:
            return None
        raise FileNotFoundError(f'{what} not found: {where_hint}. Nothing is downloaded at run time.')
    expanded = Path(os.path.expandvars(os.path.expanduser(path)))
    if not expanded.is_file():
        state = 'is a directory, not a file' if expanded.is_dir() else 'does not exist'
        raise FileNotFoundError(f'{what} not found: {str(expanded)!r} (from {source}) {state}; {where_hint}.')
    return str(expanded.resolve())


def _unwrap(obj: object, path: str) -> dict[str, torch.Tensor]:
    """Strip the usual wrappers and a DataParallel ``module.`` prefix; check that tensors remain."""
    for _ in range(3):  # nested wrappers, e.g. {'model': {'state_dict': ...}}
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f'Weight file {path!r} does not hold a state dict (got {type(obj).__name__}).')
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f'Weight file {path!r} holds no tensors (keys: {list(obj)[:8]}).')
    if all(k.startswith('module.') for k in state):
        state = {k[len('module.') :]: v for k, v in state.items()}
    return state


def _is_torchscript(path: str) -> bool:
    """TorchScript archives (e.g. OpenAI's original CLIP ``ViT-B-32.pt``) carry a ``constants.pkl`` entry."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith('constants.pkl') for name in zf.namelist())


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from a local file onto the CPU, safely.

    ``.safetensors`` files go through ``safetensors.torch.load_file``; anything else through
    ``torch.load(weights_only=True)`` (no pickled code is executed); TorchScript archives (OpenAI's original CLIP
    ``.pt`` files) through ``torch.jit.load``. Wrappers ``{'state_dict': ...}``, ``{'model': ...}``,
    ``{'params': ...}`` (BasicSR) and a ``module.`` prefix are removed; non-tensor entries are dropped.

    Args:
        path: the weight file.

    Returns:
        ``{name: tensor}`` on the CPU, dtype as stored.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read as a state dict (the message names the file).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Weight file {path!r} does not exist.')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file

            obj = load_file(path, device='cpu')
        elif _is_torchscript(path):
            obj = torch.jit.load(path, map_location='cpu').state_dict()
        else:
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # corrupt file, pickle with custom classes, wrong format ...
        raise ValueError(f'Cannot read weight file {path!r} as a state dict: {type(err).__name__}: {err}') from err
    return _unwrap(obj, path)


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], path: str, target: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with a short error naming the file and the architecture.

    Args:
        module: the freshly built network.
        state: its weights (e.g. from :func:`load_state_dict_file`).
        path: the file the weights came from (for the message).
        target: what the module is, e.g. ``"open_clip architecture 'ViT-B-32' (image tower)"``.

    Raises:
        ValueError: ``checkpoint '<path>' does not fit <target>: N missing keys (...); M unexpected keys (...);
            K shape mismatches (...)`` — the first few of each are listed.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f'{k} {tuple(state[k].shape)} in file vs {tuple(v.shape)} in model'
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', mismatched)):
        if items:
            more = f', ... (+{len(items) - 4})' if len(items) > 4 else ''
            problems.append(f'{len(items)} {label} ({", ".join(items[:4])}{more})')
    if problems:
        raise ValueError(f'checkpoint {path!r} does not fit {target}: ' + '; '.join(problems))
    module.load_state_dict(state, strict=True)


def freeze_module(module: nn.Module) -> nn.Module:
    """Freeze a pretrained backbone in place: eval mode and ``requires_grad=False`` on every parameter.

    Gradients can still flow *through* the module to its input; its parameters never receive any (``.grad`` stays
    None). Owners that are themselves modules keep it in eval mode by overriding ``train()``.
    """
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def warn_disabled(owner: str, reason: str) -> None:
    """The single warning of a component that switched itself off (``allow_missing=True`` and no weights).

    Inside a BasicSR run (its ``basicsr`` logger has handlers) it goes to that logger, i.e. to the console and the
    train log; in plain library use it is a ``UserWarning``. Never both.
    """
    message = f'{owner} is disabled: {reason}'
    logger = logging.getLogger('basicsr')
    if logger.handlers:
        logger.warning(message)
    else:
        warnings.warn(message, UserWarning, stacklevel=3)


class LRUCache:
    """A small least-recently-used cache with hit/miss counters (CPU-side results of the fixed LDR inputs).

    Args:
        capacity: maximum number of entries (0 disables caching: ``put`` stores nothing).

    Attributes:
        hits: number of ``get`` calls that found their key.
        misses: number of ``get`` calls that did not.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f'cache_size must be >= 0, got {capacity}')
        self.capacity = int(capacity)
        self._data: OrderedDict[Hashable, object] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> object | None:
        """Return the cached value (and mark it recently used), or None; counts a hit or a miss."""
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key]
        self.misses += 1
        return None

    def put(self, key: Hashable, value: object) -> None:
        """Store a value, evicting the least recently used entries beyond ``capacity``."""
        if self.capacity == 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        self._data.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data


def check_cache_keys(keys: Sequence[str], n: int, owner: str) -> list[str]:
    """Validate per-image cache keys: a sequence of ``n`` strings (not one bare string); returns them as a list."""
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence) or len(keys) != n:
        raise ValueError(f'{owner}: keys must be a sequence of {n} strings (one per image), got {keys!r}')
    return [str(k) for k in keys]
