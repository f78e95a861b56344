"""What an interrupted checkpoint save leaves behind, and how ``--auto_resume`` deals with it.

``CycleHDRModel.save`` writes each network through a temporary file and a rename (:mod:`llmhdr_basicsr.utils.fileio`),
networks first and the ``<iter>.state`` file last. A run killed (SIGKILL, power loss) in the middle of a save can
therefore leave

- temporary files ``.tmp_*`` in ``models/`` or ``training_states/`` (the kill came before the rename), and
- networks ``net_*_<iter>.pth`` of an iteration whose ``.state`` was never written,

but never a half-written file under a final name. :func:`latest_state` ignores everything but ``<iter>.state``
names (BasicSR's own scan would crash on ``.tmp_x.state``), and :func:`clean_interrupted_save` removes both kinds of
leftovers when training resumes, so the resumed run does not meet a stale ``net_g_<iter>.pth`` later.
"""

from __future__ import annotations

import os
import os.path as osp
import re

STATE_NAME = re.compile(r'(\d+)\.state')
NETWORK_NAME = re.compile(r'net_\w+?_(\d+)\.pth')
TEMP_PREFIX = '.tmp_'


def latest_state(state_dir: str) -> str | None:
    """The ``<iter>.state`` file with the highest iteration in ``state_dir`` (other names ignored), or None."""
    if not osp.isdir(state_dir):
        return None
    iters = [int(m.group(1)) for m in map(STATE_NAME.fullmatch, os.listdir(state_dir)) if m]
    return osp.join(state_dir, f'{max(iters)}.state') if iters else None


def clean_interrupted_save(experiments_root: str, resume_iter: int) -> list[str]:
    """Remove temporary files and the networks of iterations after ``resume_iter`` (a save that never finished).

    Args:
        experiments_root: ``experiments/<name>`` (with ``models/`` and ``training_states/``).
        resume_iter: the iteration of the training state that is resumed.

    Returns:
        One message per removed file (for the log).
    """
    removed = []
    for sub in ('models', 'training_states'):
        folder = osp.join(experiments_root, sub)
        if not osp.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            match = NETWORK_NAME.fullmatch(name) if sub == 'models' else None
            if name.startswith(TEMP_PREFIX):
                why = 'temporary file of an interrupted save'
            elif match and int(match.group(1)) > resume_iter:
                why = f'network of iteration {match.group(1)}, whose training state was never written'
            else:
                continue
            path = osp.join(folder, name)
            try:
                os.remove(path)
            except OSError as err:
                removed.append(f'could not remove {path} ({why}): {err}')
                continue
            removed.append(f'removed {path} ({why})')
    return removed
