"""Option-file checks: unknown keys are reported instead of being ignored silently."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from basicsr.utils import get_root_logger


def unknown_keys(block: dict, known: Iterable[str]) -> list[str]:
    """Keys of ``block`` that are not in ``known``, sorted."""
    known = set(known)
    return sorted(k for k in block if k not in known)


def check_keys(block: dict, known: Iterable[str], where: str, strict: bool = False) -> list[str]:
    """Warn (or raise with ``strict``) about keys of an option block that nothing reads.

    Args:
        block: the option dict (e.g. ``opt['train']``).
        known: every key the code reads from it.
        where: the block's name in the YAML (e.g. ``'train'``, ``'datasets.train'``), used in the message.
        strict: raise ``KeyError`` instead of logging a warning.

    Returns:
        The unknown keys.
    """
    known = list(known)
    bad = unknown_keys(block, known)
    if bad:
        hints = []
        for key in bad:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hints.append(f'{key!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
        message = f'Unknown option(s) in {where}: {", ".join(hints)}. Known: {", ".join(sorted(known))}.'
        if strict:
            raise KeyError(message)
        get_root_logger().warning(message)
    return bad
