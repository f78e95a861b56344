"""Pre-flight checks of BasicSR option files: every mistake is one :class:`OptionError` naming the option.

BasicSR reads its options lazily, so a wrong ``type:``, a missing folder or a misspelt key surfaces minutes later
deep inside a constructor (or never). :mod:`llmhdr_basicsr.compat` runs these checks around BasicSR's
``parse_options`` for ``train.py`` and ``test.py``:

- :func:`check_option_file` before it (what would crash inside ``parse_options`` itself): the ``-opt`` file exists
  and is a YAML mapping, the keys BasicSR indexes exist, ``manual_seed`` is an integer, each ``--force_yml`` entry
  is ``key:sub=value`` with existing parent keys;
- :func:`check_options` after it, on the parsed options: every ``type:`` is in its registry (model, arch, dataset,
  loss, metric; scheduler and optimizer for :class:`CycleHDRModel`), every ``dataroot_*`` folder and
  ``meta_info*`` file exists, checkpoints named under ``path`` exist (and a test of CycleHDRModel has one), numbers
  such as ``total_iter`` or ``batch_size_per_gpu`` are in range, ``num_gpu`` matches the machine, and for
  CycleHDRModel unknown keys anywhere in the file are errors (BasicSR would ignore them).

Messages read ``<option>: <what is wrong> — <what to put there>``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import os.path as osp
import re
from collections.abc import Iterable, Mapping

from llmhdr_basicsr.utils.errors import OptionError

#: Keys BasicSR itself reads or writes at the top level (``parse_options`` adds the last group).
BASICSR_TOP_KEYS = frozenset({
    'name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'path', 'train', 'val', 'logger',
    'dist_params', 'find_unused_parameters', 'use_static_graph',
    'is_train', 'dist', 'rank', 'world_size', 'auto_resume', 'root_path',
})  # fmt: skip
LOGGER_KEYS = frozenset({'print_freq', 'print_seconds', 'save_checkpoint_freq', 'use_tb_logger', 'wandb'})
PATH_FIXED_KEYS = frozenset({
    'resume_state', 'ignore_resume_networks', 'experiments_root', 'models', 'training_states', 'log', 'visualization',
    'results_root',
})  # fmt: skip
PATH_PATTERN = re.compile(r'(pretrain_network|strict_load|param_key)_\w+')
CYCLEHDR_NETWORKS = ('network_g', 'network_g_hdr2ldr', 'network_d_hdr', 'network_d_ldr')
SCHEDULERS = ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR', 'LinearDecayLR')
OPTIMIZERS = ('Adam', 'AdamW')
#: What each data folder option must hold, for the messages.
DATAROOT_HINTS = {
    'dataroot_ldr': 'a folder of LDR images (8/16-bit PNG, JPEG, TIFF)',
    'dataroot_hdr': 'a folder of HDR images (.hdr, .exr, .pfm, float TIFF)',
    'dataroot_lq': 'the folder of input images (LDR photos for LDR->HDR)',
    'dataroot_gt': 'the folder of ground-truth images (linear HDR for this plugin)',
}
PLACEHOLDER = re.compile(r'<[^<>]+>')


def _close(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f' (did you mean {close[0]!r}?)' if close else ''


def _where(path: str) -> str:
    return '' if osp.isabs(path) else f' (relative to the current directory {os.getcwd()})'


# ------------------------------------------------------------------------------------------ before parse_options
def check_option_file(argv: list[str]) -> None:
    """Check what BasicSR's ``parse_options`` would trip over; no-op when ``-opt`` is absent (argparse reports it).

    Args:
        argv: the command-line arguments (``sys.argv[1:]``).

    Raises:
        OptionError: the option file is missing, unreadable, not YAML, not a mapping, lacks ``name`` / ``num_gpu`` /
            ``datasets`` / ``path``, has a non-integer ``manual_seed``, or a ``--force_yml`` entry is malformed.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt')
    parser.add_argument('--force_yml', nargs='+', default=None)
    args, _ = parser.parse_known_args(argv)
    if args.opt is None:
        return
    path = args.opt
    if not osp.isfile(path):
        state = 'is a folder' if osp.isdir(path) else 'does not exist'
        raise OptionError(f'-opt: option file {path!r} {state}{_where(path)} — give a BasicSR option file (.yml), '
                          'e.g. options/llmhdr_smoke.yml')  # fmt: skip
    import yaml
    from basicsr.utils.options import ordered_yaml

    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
    except OSError as err:
        raise OptionError(f'-opt: cannot read option file {path!r}: {err.strerror or err}') from err
    except yaml.YAMLError as err:
        raise OptionError(f'-opt: {path} is not valid YAML: {" ".join(str(err).split())}') from err
    if not isinstance(opt, Mapping):
        raise OptionError(f'-opt: {path} does not hold a mapping of options (got {type(opt).__name__})')
    for key, kind in (('name', str), ('num_gpu', (int, str)), ('datasets', Mapping), ('path', Mapping)):
        if key not in opt:
            raise OptionError(f'{key}: missing in {path} — every BasicSR option file sets name, model_type, num_gpu, '
                              'datasets and path')  # fmt: skip
        if not isinstance(opt[key], kind) or isinstance(opt[key], bool):
            raise OptionError(f'{key}: {opt[key]!r} in {path} is not a {_kind_name(kind)}')
    for name, block in opt['datasets'].items():
        if not isinstance(block, Mapping):
            raise OptionError(f'datasets.{name}: expected a block of dataset options, got {block!r}')
    seed = opt.get('manual_seed')
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise OptionError(f'manual_seed: {seed!r} is not an integer — set an integer seed (or ~ for a random one)')
    for entry in args.force_yml or []:
        if entry.count('=') != 1 or not entry.split('=')[0].strip():
            raise OptionError(f'--force_yml {entry!r}: expected key:sub=value, e.g. train:total_iter=1000')
        keys = entry.split('=')[0].strip().split(':')
        node, done = opt, []
        for key in keys[:-1]:
            done.append(key)
            if not isinstance(node, Mapping) or key not in node:
                raise OptionError(f'--force_yml {entry!r}: {":".join(done)} does not exist in {path} '
                                  '(--force_yml changes existing blocks only)')  # fmt: skip
            node = node[key]
        if not isinstance(node, Mapping):
            raise OptionError(f'--force_yml {entry!r}: {":".join(keys[:-1])} is not a block of options')


def _kind_name(kind) -> str:
    names = {str: 'string', Mapping: 'block of options', (int, str): 'number (or auto)'}
    return names.get(kind, str(kind))


# ------------------------------------------------------------------------------------------- after parse_options
def check_options(opt: dict, is_train: bool) -> None:
    """Check parsed BasicSR options (see the module docstring); the first problem found is raised.

    Args:
        opt: the options as ``parse_options`` returns them.
        is_train: ``train.py`` (True) or ``test.py`` (False).

    Raises:
        OptionError: naming the option and what to put there.
    """
    from basicsr.utils.registry import MODEL_REGISTRY

    model_type = opt.get('model_type')
    if model_type is None:
        raise OptionError('model_type: missing — e.g. model_type: CycleHDRModel')
    _check_registered('model_type', model_type, MODEL_REGISTRY, 'model')
    cyclehdr = model_type == 'CycleHDRModel'
    if cyclehdr:
        _check_unknown(opt, BASICSR_TOP_KEYS | set(CYCLEHDR_NETWORKS), '', 'top-level option')
    _check_num_gpu(opt)
    _check_networks(opt, cyclehdr, is_train)
    _check_paths(opt, is_train, cyclehdr)
    _check_datasets(opt, is_train, cyclehdr)
    if is_train:
        _check_train(opt, cyclehdr)
        _check_logger(opt, cyclehdr)
    _check_val(opt, cyclehdr, is_train)


def _check_registered(option: str, name, registry, what: str) -> None:
    if not isinstance(name, str) or name not in registry:
        available = sorted(registry.keys())
        raise OptionError(f'{option}: {name!r} is not a registered {what}{_close(name, available)} — registered: '
                          f'{", ".join(available)}')  # fmt: skip


def _check_unknown(block: Mapping, known: Iterable[str], prefix: str, what: str) -> None:
    known = set(known)
    for key in block:
        if key not in known:
            raise OptionError(f'{prefix}{key}: unknown {what}{_close(key, known)} — known: {", ".join(sorted(known))}')


def _positive(value, option: str, integer: bool = False, zero_ok: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if zero_ok else value > 0)
    if ok and integer and float(value) != int(value):
        ok = False
    if not ok:
        what = ('a whole number' if integer else 'a number') + (' >= 0' if zero_ok else ' > 0')
        raise OptionError(f'{option}: {value!r} is not {what}')


def _check_num_gpu(opt: dict) -> None:
    import torch

    value = opt.get('num_gpu')
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OptionError(f'num_gpu: {value!r} is not valid — use 0 (CPU), the number of GPUs, or auto')
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if value > available and not opt.get('dist'):
        raise OptionError(f'num_gpu: {value}, but torch sees {available} CUDA device(s) on this machine — set num_gpu: '
                          '0 (CPU) or auto')  # fmt: skip


def _check_networks(opt: dict, cyclehdr: bool, is_train: bool) -> None:
    from basicsr.utils.registry import ARCH_REGISTRY

    for key, block in opt.items():
        if not key.startswith('network_'):
            continue
        if not isinstance(block, Mapping):
            raise OptionError(f'{key}: expected a block with type and the network options, got {block!r}')
        if 'type' not in block:
            checkpoint = (opt.get('path') or {}).get(f'pretrain_network_{key[len("network_") :]}')
            if cyclehdr and not is_train and checkpoint:
                continue  # the architecture comes from the checkpoint's own 'arch' entry
            raise OptionError(f'{key}.type: missing — name the architecture, e.g. type: FeedbackUNet')
        _check_registered(f'{key}.type', block['type'], ARCH_REGISTRY, 'architecture (arch)')
    if cyclehdr and is_train:
        for key in CYCLEHDR_NETWORKS:
            if key not in opt:
                raise OptionError(f'{key}: missing — CycleHDRModel training needs {", ".join(CYCLEHDR_NETWORKS)}')
    elif cyclehdr and 'network_g' not in opt and not (opt.get('path') or {}).get('pretrain_network_g'):
        raise OptionError('network_g: missing — give the generator block or path.pretrain_network_g')


def _check_datasets(opt: dict, is_train: bool, cyclehdr: bool) -> None:
    from basicsr.utils.registry import DATASET_REGISTRY

    datasets = opt.get('datasets') or {}
    if is_train and 'train' not in datasets:
        raise OptionError('datasets.train: missing — training needs a datasets.train block (e.g. '
                          'UnpairedLDRHDRDataset with dataroot_ldr and dataroot_hdr)')  # fmt: skip
    if not is_train and not datasets:
        raise OptionError('datasets: empty — test.py runs the datasets named test_1, test_2, ...')
    for name, block in datasets.items():
        where = f'datasets.{name}'
        phase = name.split('_')[0]
        allowed = ('train', 'val') if is_train else ('test', 'val')
        if phase not in allowed:
            raise OptionError(f'{where}: {"training" if is_train else "test.py"} reads only '
                              f'{" and ".join(a + "*" for a in allowed)} datasets — rename the block')  # fmt: skip
        for key in ('name', 'type'):
            if key not in block:
                raise OptionError(f'{where}.{key}: missing — every dataset block has a name and a type (e.g. type: '
                                  'UnpairedLDRHDRDataset)')  # fmt: skip
        _check_registered(f'{where}.type', block['type'], DATASET_REGISTRY, 'dataset')
        cls = DATASET_REGISTRY.get(block['type'])
        keys = getattr(cls, 'OPTION_KEYS', None)
        if cyclehdr and keys is not None:
            from llmhdr_basicsr.data.dataset_util import BASICSR_KEYS

            _check_unknown(block, BASICSR_KEYS | keys, f'{where}.', f'option of {block["type"]}')
        for key, value in block.items():
            if key.startswith('dataroot_') and value is not None:
                if not isinstance(value, str) or not osp.isdir(osp.expanduser(value)):
                    hint = DATAROOT_HINTS.get(key, 'an existing folder')
                    state = (
                        'is a file, not a folder' if isinstance(value, str) and osp.isfile(value) else 'does not exist'
                    )
                    raise OptionError(f"{where}.{key}: folder '{value}' {state}{_where(str(value))} — set it to {hint}")
            if key.startswith('meta_info') and value is not None and not osp.isfile(osp.expanduser(str(value))):
                raise OptionError(f"{where}.{key}: file '{value}' does not exist{_where(str(value))} — a text file "
                                  'listing one image per line, or ~ to use every image of the folder')  # fmt: skip
        if phase == 'train':
            _positive(block.get('batch_size_per_gpu'), f'{where}.batch_size_per_gpu', integer=True)
            _positive(block.get('num_worker_per_gpu', 0), f'{where}.num_worker_per_gpu', integer=True, zero_ok=True)
            _positive(block.get('dataset_enlarge_ratio', 1), f'{where}.dataset_enlarge_ratio')
            if block.get('prefetch_mode') not in (None, 'cpu', 'cuda'):
                raise OptionError(f'{where}.prefetch_mode: {block["prefetch_mode"]!r} — use ~ (none), cpu or cuda')


def _check_paths(opt: dict, is_train: bool, cyclehdr: bool) -> None:
    paths = opt.get('path') or {}
    if cyclehdr:
        known = {k for k in paths if PATH_PATTERN.fullmatch(k)} | PATH_FIXED_KEYS
        _check_unknown(paths, known, 'path.', 'path option')
    for key, value in paths.items():
        if not key.startswith('pretrain_network_') or value is None:
            continue
        net = key[len('pretrain_network_') :]
        if PLACEHOLDER.search(str(value)):
            raise OptionError(f"path.{key}: '{value}' is a placeholder — replace it with the checkpoint to load, e.g. "
                              f'experiments/<experiment name>/models/net_{net}_latest.pth written by training, or '
                              f'give --force_yml path:{key}=PATH')  # fmt: skip
        if not osp.isfile(str(value)):
            state = 'is a folder' if osp.isdir(str(value)) else 'does not exist'
            raise OptionError(f"path.{key}: checkpoint '{value}' {state}{_where(str(value))} — give a net_{net}_*.pth "
                              f'file written by training (experiments/<name>/models/), or ~ for none')  # fmt: skip
    resume = paths.get('resume_state')
    if is_train and resume is not None and not opt.get('auto_resume') and not osp.isfile(str(resume)):
        raise OptionError(f"path.resume_state: '{resume}' does not exist{_where(str(resume))} — give a "
                          'training_states/<iter>.state file, or use --auto_resume')  # fmt: skip
    if cyclehdr and not is_train:
        if not paths.get('pretrain_network_g'):
            raise OptionError('path.pretrain_network_g: required for testing — set it to the LDR->HDR checkpoint, '
                              'e.g. experiments/<name>/models/net_g_latest.pth, or give --force_yml '
                              'path:pretrain_network_g=PATH')  # fmt: skip
        hdr_inputs = [n for n, d in (opt.get('datasets') or {}).items() if d.get('type') == 'SingleHDRDataset']
        if hdr_inputs and not paths.get('pretrain_network_g_hdr2ldr'):
            raise OptionError(
                f'path.pretrain_network_g_hdr2ldr: required to tone-map datasets.{hdr_inputs[0]} — set it to '
                'experiments/<name>/models/net_g_hdr2ldr_latest.pth (the HDR->LDR generator)'
            )


def _check_train(opt: dict, cyclehdr: bool) -> None:
    from basicsr.utils.registry import LOSS_REGISTRY

    train = opt.get('train')
    if not isinstance(train, Mapping):
        raise OptionError('train: missing — training needs a train block (optimizers, total_iter, losses)')
    _positive(train.get('total_iter'), 'train.total_iter', integer=True)
    if cyclehdr:
        from llmhdr_basicsr.models.cyclehdr_model import TRAIN_KEYS

        _check_unknown(train, TRAIN_KEYS, 'train.', 'training option')
        for key in ('optim_g', 'optim_d'):
            block = train.get(key)
            if not isinstance(block, Mapping) or 'type' not in block:
                raise OptionError(f'train.{key}: missing — e.g. {key}: {{type: Adam, lr: !!float 2e-4}}')
            if block['type'] not in OPTIMIZERS:
                kind = block['type']
                raise OptionError(
                    f'train.{key}.type: {kind!r} is not supported{_close(kind, OPTIMIZERS)} — choose '
                    f'{" or ".join(OPTIMIZERS)}'
                )
        sched = train.get('scheduler')
        if sched is not None:
            if not isinstance(sched, Mapping) or sched.get('type') not in SCHEDULERS:
                kind = sched.get('type') if isinstance(sched, Mapping) else sched
                raise OptionError(f'train.scheduler.type: {kind!r} is unknown{_close(kind, SCHEDULERS)} — choose '
                                  f'{", ".join(SCHEDULERS)}')  # fmt: skip
    for key, block in train.items():
        if key.endswith('_opt') and isinstance(block, Mapping) and 'type' in block:
            _check_registered(f'train.{key}.type', block['type'], LOSS_REGISTRY, 'loss')
            for file_key in ('checkpoint', 'weights'):  # CLIP / SAM checkpoints, LPIPS backbone
                value = block.get(file_key)
                if value in (None, '') or block.get('allow_missing') or osp.isfile(osp.expanduser(str(value))):
                    continue  # with allow_missing the loss switches itself off with a warning instead
                raise OptionError(f"train.{key}.{file_key}: file '{value}' does not exist{_where(str(value))} — set it "
                                  f'to a local weight file for {block["type"]}, or set train.{key}.allow_missing: true '
                                  'to train without this loss')  # fmt: skip


def _check_logger(opt: dict, cyclehdr: bool) -> None:
    logger = opt.get('logger')
    if not isinstance(logger, Mapping):
        raise OptionError('logger: missing — training needs logger: {print_freq: 100, save_checkpoint_freq: 5000}')
    if cyclehdr:
        _check_unknown(logger, LOGGER_KEYS, 'logger.', 'logger option')
    _positive(logger.get('print_freq'), 'logger.print_freq', integer=True)
    _positive(logger.get('save_checkpoint_freq'), 'logger.save_checkpoint_freq')
    if 'print_seconds' in logger:
        _positive(logger['print_seconds'], 'logger.print_seconds', zero_ok=True)


def _check_val(opt: dict, cyclehdr: bool, is_train: bool) -> None:
    from basicsr.utils.registry import METRIC_REGISTRY

    val = opt.get('val')
    if val is None:  # training without a val block skips validation (BasicSR's behaviour)
        if not is_train:
            raise OptionError('val: missing — test.py needs a val block (at least save_img: true)')
        return
    if not isinstance(val, Mapping):
        raise OptionError(f'val: expected a block of validation options, got {val!r}')
    if cyclehdr:
        from llmhdr_basicsr.models.hdr_base_model import VAL_KEYS

        _check_unknown(val, VAL_KEYS, 'val.', 'validation option')
    if is_train and any(name.startswith('val') for name in opt.get('datasets') or {}):
        _positive(val.get('val_freq'), 'val.val_freq')
    if not is_train and 'save_img' not in val:
        raise OptionError('val.save_img: missing — test.py needs it (true: write the results)')
    for name, block in (val.get('metrics') or {}).items():
        if not isinstance(block, Mapping) or 'type' not in block:
            raise OptionError(f'val.metrics.{name}: expected {{type: <metric>, ...}}, got {block!r}')
        _check_registered(f'val.metrics.{name}.type', block['type'], METRIC_REGISTRY, 'metric')
