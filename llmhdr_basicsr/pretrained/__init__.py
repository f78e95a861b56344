"""The model that ships with the package: both generators of ``options/llmhdr_cpu.yml`` trained on the example data.

``llmhdr-infer`` (G_Y, LDR -> HDR) and ``llmhdr-tonemap`` (G_X, HDR -> LDR) use it when no network is given
(no ``--weights``, ``-opt`` or ``--arch``). The files of this folder:

- ``cyclehdr_cpu_g.pth`` / ``cyclehdr_cpu_g_hdr2ldr.pth``: ``{'params': state_dict, 'arch': {...}}`` checkpoints, as
  written by :func:`llmhdr_basicsr.infer.save_inference_checkpoint` (float32, CPU tensors);
- ``cyclehdr_cpu.json``: how they were made: the training command, the recipe's digest
  (:func:`recipe_digest` of the option file it was trained with), iterations, training time, peak memory and the
  validation scores. A test compares that digest with the current ``options/llmhdr_cpu.yml``, so a change of the
  recipe fails until the model is retrained with ``scripts/bundle_model.py``.
"""

from __future__ import annotations

import hashlib
import json
import os.path as osp

HERE = osp.dirname(osp.abspath(__file__))
CHECKPOINTS = {'ldr2hdr': 'cyclehdr_cpu_g.pth', 'hdr2ldr': 'cyclehdr_cpu_g_hdr2ldr.pth'}
METADATA = 'cyclehdr_cpu.json'

# the option blocks that decide what the model learns (not paths, logging, validation or the experiment's name)
RECIPE_KEYS = ('manual_seed', 'network_g', 'network_g_hdr2ldr', 'network_d_hdr', 'network_d_ldr', 'train')
RECIPE_DATASET_KEYS = ('crop_size', 'use_hflip', 'hdr_norm', 'virtual_camera', 'batch_size_per_gpu',
                       'dataset_enlarge_ratio', 'type')  # fmt: skip


def recipe_digest(opt: dict) -> str:
    """A digest of the training recipe in a parsed BasicSR option file (``yaml.safe_load`` of the YAML).

    Args:
        opt: the option dict; only :data:`RECIPE_KEYS` and the training dataset's :data:`RECIPE_DATASET_KEYS` count.

    Returns:
        16 hexadecimal digits.
    """
    recipe = {key: opt.get(key) for key in RECIPE_KEYS}
    train_set = ((opt.get('datasets') or {}).get('train')) or {}
    recipe['datasets.train'] = {key: train_set.get(key) for key in RECIPE_DATASET_KEYS}
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def bundled_checkpoint(direction: str) -> str:
    """Path of the shipped generator for ``direction`` (``'ldr2hdr'``: G_Y, ``'hdr2ldr'``: G_X).

    Raises:
        FileNotFoundError: the file is missing from this installation, with what to pass instead.
    """
    path = osp.join(HERE, CHECKPOINTS[direction])
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'the bundled model {path} is missing from this installation; pass --weights <checkpoint> (and -opt) '
            'or --arch NAME for a classical operator'
        )
    return path


def metadata() -> dict:
    """The contents of ``cyclehdr_cpu.json`` (empty when the file is absent)."""
    path = osp.join(HERE, METADATA)
    if not osp.isfile(path):
        return {}
    with open(path, encoding='utf-8') as f:
        return json.load(f)
