"""The architecture of a network taken from its checkpoint, so that test option files fit every training run.

``CycleHDRModel.save_network`` writes ``{'params': ..., 'arch': {'type': NAME, 'kwargs': {...}}, 'version': ...}``:
the exact ``network_<x>`` block the network was built from. A test option file then needs only the checkpoint path;
:func:`network_opt_from_checkpoint` turns the option file's ``network_<x>`` block (complete, partial or absent) into
the block the checkpoint was trained with:

- keys the option file omits are taken from the checkpoint (silently: that is the point);
- keys whose value differs from the checkpoint's (or that the checkpoint does not set) are overridden by the
  checkpoint, with one warning naming them, because a strict load of those weights into another architecture
  would fail anyway; with ``path.strict_load_<x>: false`` (deliberate partial loading) the option file wins;
- a checkpoint without an ``arch`` entry (plain BasicSR files) leaves the block as it is.
"""

from __future__ import annotations

import os.path as osp

from llmhdr_basicsr.utils.errors import OptionError


def read_checkpoint_arch(path: str, option: str = 'checkpoint') -> dict | None:
    """The ``{'type': NAME, **kwargs}`` block recorded in a checkpoint, or None when it records none.

    Args:
        path: a ``net_*.pth`` file.
        option: the option that names it, for messages (e.g. ``'path.pretrain_network_g'``).

    Raises:
        OptionError: the file does not exist or cannot be read as a checkpoint.
    """
    import torch

    if not osp.isfile(path):
        raise OptionError(f"{option}: checkpoint '{path}' does not exist — give a net_*.pth file written by training")
    try:
        try:  # memory-mapped: only the small 'arch' entry is read, not the weights
            ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        reason = ' '.join(str(err).split())[:200]
        raise OptionError(
            f"{option}: checkpoint '{path}' cannot be read ({type(err).__name__}: {reason}) — give a net_*.pth file "
            'written by training'
        ) from err
    arch = ckpt.get('arch') if isinstance(ckpt, dict) else None
    if not isinstance(arch, dict) or not isinstance(arch.get('type'), str):
        return None
    return {'type': arch['type'], **dict(arch.get('kwargs') or {})}


def network_opt_from_checkpoint(opt: dict, name: str) -> dict:
    """The ``network_<name>`` block to build, completed (or corrected) from the checkpoint it will load.

    Args:
        opt: BasicSR options (``network_<name>``, ``path.pretrain_network_<name>``, ``path.strict_load_<name>``).
        name: the network's suffix, e.g. ``'g'`` or ``'g_hdr2ldr'``.

    Returns:
        The block (a new dict); the option file's own block when there is no checkpoint or it records no
        architecture.

    Raises:
        OptionError: neither the option file nor the checkpoint describes the network.
    """
    key = f'network_{name}'
    block = opt.get(key)
    path = (opt.get('path') or {}).get(f'pretrain_network_{name}')
    arch = read_checkpoint_arch(path, f'path.pretrain_network_{name}') if path else None
    if arch is None:
        if block is None:
            where = f"checkpoint '{path}' records no architecture" if path else 'there is no checkpoint'
            raise OptionError(f'{key}: missing and {where} — give the {key} block (type and options) in the YAML')
        return dict(block)
    if block is None:
        _log(f'{key}: architecture from {path}: {_describe(arch)}')
        return arch
    merged = {**arch, **block} if not (opt.get('path') or {}).get(f'strict_load_{name}', True) else dict(arch)
    differ = [k for k in block if k not in arch or block[k] != arch[k]]
    if differ and merged == arch:
        shown = ', '.join(f'{k}: {block[k]!r} -> {arch.get(k, "(default)")!r}' for k in differ)
        _log(f'{key}: the option file differs from the architecture recorded in {path} ({shown}); the checkpoint\'s '
             f'is used (set path.strict_load_{name}: false to keep the option file\'s)', warning=True)  # fmt: skip
    return merged


def _describe(arch: dict) -> str:
    return arch['type'] + ''.join(f', {k}={v!r}' for k, v in arch.items() if k != 'type')


def _log(message: str, warning: bool = False) -> None:
    from basicsr.utils import get_root_logger

    logger = get_root_logger()
    (logger.warning if warning else logger.info)(message)


def checkpoint_fit_problem(net, path: str, strict: bool = True, param_key: str | None = 'params') -> str | None:
    """Why BasicSR's ``load_network`` would fail to load ``path`` into ``net``, in one line; None when it fits.

    Mirrors ``BaseModel.load_network``: ``param_key`` falls back to ``params``, a ``module.`` prefix is ignored,
    and without ``strict`` only an unreadable file counts (BasicSR skips every difference of keys or shapes then).

    Args:
        net: the bare network (not wrapped in (D)DP).
        path: the checkpoint.
        strict: BasicSR's ``strict_load``.
        param_key: ``'params'``, ``'params_ema'`` or None (the file is the state dict).
    """
    import torch

    try:
        try:
            ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        except RuntimeError:
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        return f'cannot be read ({type(err).__name__}: {" ".join(str(err).split())[:200]})'
    if param_key is not None:
        if not isinstance(ckpt, dict):
            return f'holds a {type(ckpt).__name__}, not a checkpoint dict'
        if param_key not in ckpt and 'params' in ckpt:
            param_key = 'params'
        if param_key not in ckpt:
            held = [k for k, v in ckpt.items() if isinstance(v, dict) and k != 'arch']
            return f'has no {param_key!r} weights (keys holding weights: {held})'
        ckpt = ckpt[param_key]
    if not isinstance(ckpt, dict):
        return f'holds a {type(ckpt).__name__}, not a state dict'
    if not strict:  # BasicSR then skips missing, unexpected and differently shaped weights
        return None
    state = {k.removeprefix('module.'): v for k, v in ckpt.items()}
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    for label, items in (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', mismatched)):
        if items:
            more = f', ... (+{len(items) - 3})' if len(items) > 3 else ''
            problems.append(f'{len(items)} {label} ({", ".join(items[:3])}{more})')
    return '; '.join(problems) or None
