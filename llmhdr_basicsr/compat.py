"""Run-time fixes for basicsr 1.4.2 on current torch and on CPU, applied once when the plugin is imported.

Nothing here edits BasicSR's files; each fix replaces one BasicSR function object at run time and is a no-op where
BasicSR already behaves (a BasicSR checkout, a GPU machine):

- ``OPENCV_IO_ENABLE_OPENEXR=1`` as a default (opencv-python 4.x ships its EXR codec switched off);
- CPU-safe ``load_resume_state``: maps resume states to the CPU when there is no GPU (BasicSR calls ``.cuda()``),
  and looks for ``--auto_resume`` states under ``opt['path']['experiments_root']`` instead of ``./experiments``;
  installed in ``basicsr.train`` and, when BasicSR's own ``train.py`` runs as ``__main__``, swapped in there too
  (``parse_options`` runs before ``load_resume_state``, and ``train_pipeline`` reads the name from its globals);
- output folders: with a pip-installed basicsr, ``python -m basicsr.train|test`` would write ``experiments/``,
  ``tb_logger/`` and ``results/`` into site-packages; such paths are re-rooted to the current directory;
- ``--local-rank`` (torch.distributed.launch spelling) is accepted as ``--local_rank``;
- ``--launcher pytorch`` on a machine without CUDA: BasicSR divides by ``torch.cuda.device_count()`` and asks for
  NCCL; here the process group falls back to gloo on CPU (so multi-process training is testable on CPU);
- registry look-ups that fail name the registry, the closest matches and every available name;
- option files are checked before anything is built (:mod:`~llmhdr_basicsr.utils.option_check`), and a mistake ends
  in one line ``error: <option>: <problem> — <what to do>`` with exit status 1 instead of a traceback
  (:mod:`~llmhdr_basicsr.utils.errors`; ``--debug`` or ``LLMHDR_TRACEBACK=1`` shows the traceback), also for a
  checkpoint that does not fit its network (``BaseModel.load_network``);
- the training loop (:mod:`~llmhdr_basicsr.utils.train_hooks`): a progress line at least every
  ``logger.print_seconds`` (30) with a correct ETA and the learning rates in tensorboard, loader workers capped at the
  CPU count, and an exact ``--auto_resume`` (random state and data position restored, leftovers of an interrupted
  checkpoint save removed: :mod:`~llmhdr_basicsr.utils.rng_state`, :mod:`~llmhdr_basicsr.utils.resume_files`).
"""

from __future__ import annotations

import difflib
import os
import os.path as osp
import sys

os.environ.setdefault('OPENCV_IO_ENABLE_OPENEXR', '1')

import basicsr  # noqa: E402
import basicsr.train as _bsr_train  # noqa: E402
import basicsr.utils as _bsr_utils  # noqa: E402
import basicsr.utils.dist_util as _bsr_dist  # noqa: E402
import basicsr.utils.options as _bsr_options  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from basicsr.models.base_model import BaseModel  # noqa: E402
from basicsr.utils import check_resume  # noqa: E402
from basicsr.utils.registry import Registry  # noqa: E402

from llmhdr_basicsr.utils import errors, option_check, resume_files, train_hooks  # noqa: E402

_PATCHED_FLAG = '_llmhdr_basicsr_patched'
BASICSR_PARENT = osp.dirname(osp.dirname(osp.abspath(basicsr.__file__)))
BASICSR_INSTALLED = osp.basename(BASICSR_PARENT) in ('site-packages', 'dist-packages')


# ---------------------------------------------------------------------------------------------------- resume on CPU
def load_resume_state(opt: dict) -> dict | None:
    """Drop-in for ``basicsr.train.load_resume_state`` that also works without CUDA.

    Args:
        opt: parsed BasicSR options (``auto_resume``, ``num_gpu``, ``path.experiments_root``, ``path.resume_state``).

    Returns:
        The resume state dict (``epoch``, ``iter``, ``optimizers``, ``schedulers``, ...) or None.
    """
    resume_state_path = None
    if opt.get('auto_resume'):
        # only '<iter>.state' names: an interrupted save may have left '.tmp_*.state' (removed below)
        resume_state_path = resume_files.latest_state(osp.join(opt['path']['experiments_root'], 'training_states'))
        if resume_state_path is not None:
            opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']
    if resume_state_path is None:
        return None
    if opt.get('num_gpu', 0) and torch.cuda.is_available():
        device_id = torch.cuda.current_device()
        map_location = lambda storage, loc: storage.cuda(device_id)  # noqa: E731
    else:
        map_location = 'cpu'
    try:
        state = torch.load(resume_state_path, map_location=map_location, weights_only=False)
    except Exception as err:  # a truncated file names itself instead of failing deep inside torch
        raise RuntimeError(f'Cannot load resume state {resume_state_path}: {err}') from err
    check_resume(opt, state['iter'])
    if opt.get('auto_resume') and opt.get('rank', 0) == 0:
        train_hooks.NOTES.extend(resume_files.clean_interrupted_save(opt['path']['experiments_root'], state['iter']))
    return state


def _swap_resume_into_main() -> None:
    """``python basicsr/train.py`` keeps its own (CUDA-only) ``load_resume_state`` in ``__main__``: replace it."""
    main = errors.basicsr_script_main('train')
    if main is not None and hasattr(main, 'train_pipeline') and hasattr(main, 'load_resume_state'):
        main.load_resume_state = load_resume_state


# ------------------------------------------------------------------------------------------------- output folders
def reroot(path):
    """Map a path inside site-packages (where an installed basicsr puts its root_path) to the current directory."""
    if not (BASICSR_INSTALLED and isinstance(path, str)):
        return path
    absolute = osp.abspath(path)
    if absolute == BASICSR_PARENT or absolute.startswith(BASICSR_PARENT + os.sep):
        return osp.normpath(osp.join(os.getcwd(), osp.relpath(absolute, BASICSR_PARENT)))
    return path


def _rerooting(fn, keyword: str):
    def wrapper(*args, **kwargs):
        if args:
            args = (reroot(args[0]),) + args[1:]
        elif keyword in kwargs:
            kwargs[keyword] = reroot(kwargs[keyword])
        return fn(*args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn
    return wrapper


def _normalise_argv() -> None:
    """Accept ``--local-rank`` (torch.distributed.launch) where BasicSR's parser knows only ``--local_rank``."""
    sys.argv = [a.replace('--local-rank', '--local_rank', 1) if a.startswith('--local-rank') else a for a in sys.argv]


# ---------------------------------------------------------------------------------------------------- distributed
def init_dist_pytorch(backend: str = 'nccl', **kwargs) -> None:
    """``torchrun`` / ``--launcher pytorch`` start-up that also works on CPU-only machines (gloo)."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        local_rank = int(os.environ.get('LOCAL_RANK', os.environ['RANK']))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    else:
        backend = 'gloo'
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, **kwargs)


# ------------------------------------------------------------------------------------------------------ checkpoints
def _load_network(original):
    """``BaseModel.load_network`` that first checks the file against the network (one line naming the option)."""

    def load_network(self, net, load_path, strict=True, param_key='params'):
        from llmhdr_basicsr.utils.checkpoint_arch import checkpoint_fit_problem

        bare = self.get_bare_model(net)
        problem = checkpoint_fit_problem(bare, load_path, strict, param_key)
        if problem is not None:
            paths = self.opt.get('path') or {}
            option = next((f'path.{k}' for k, v in paths.items() if v == load_path), 'checkpoint')
            network = option.replace('path.pretrain_', '') if option.startswith('path.pretrain_') else 'the network'
            raise errors.OptionError(
                f"{option}: '{load_path}' does not fit {network} ({type(bare).__name__} built from the options): "
                f'{problem} — use the checkpoint written with these options, or a checkpoint of this project (it '
                'records its architecture)'
            )
        return original(self, net, load_path, strict, param_key)

    load_network.__doc__ = original.__doc__
    load_network.__wrapped__ = original
    return load_network


# ------------------------------------------------------------------------------------------------------ registries
def _registry_get(self, name, suffix='basicsr'):
    obj = self._obj_map.get(name)
    if obj is None and name is not None:
        obj = self._obj_map.get(f'{name}_{suffix}')
    if obj is None:
        available = sorted(self._obj_map)
        close = difflib.get_close_matches(str(name), available, n=3, cutoff=0.5)
        hint = f' Did you mean {", ".join(repr(c) for c in close)}?' if close else ''
        raise KeyError(
            f"No object named '{name}' found in '{self._name}' registry!{hint} "
            f'Available: {", ".join(available)}. (Is the plugin that provides it installed and not disabled by '
            f'BASICSR_PLUGINS_DISABLE?)'
        )
    return obj


def apply() -> None:
    """Apply every patch once (idempotent)."""
    if getattr(_bsr_options.parse_options, _PATCHED_FLAG, False):
        return
    _bsr_train.load_resume_state = load_resume_state
    _bsr_dist._init_dist_pytorch = init_dist_pytorch
    Registry.get = _registry_get
    BaseModel.load_network = _load_network(BaseModel.load_network)
    errors.install_excepthook()

    original_parse = _bsr_options.parse_options

    def parse_options(root_path, is_train=True):
        _swap_resume_into_main()
        _normalise_argv()
        option_check.check_option_file(sys.argv[1:])
        opt, args = original_parse(reroot(root_path), is_train)
        option_check.check_options(opt, is_train)
        (train_hooks.install if is_train else train_hooks.install_test)(opt)
        return opt, args

    parse_options.__doc__ = original_parse.__doc__
    setattr(parse_options, _PATCHED_FLAG, True)
    _bsr_options.parse_options = parse_options
    # BasicSR's scripts bind these names with ``from ... import`` when they are executed; the start-up hook loads
    # the plugin while ``basicsr/__init__`` finishes, i.e. before runpy executes train.py/test.py as __main__.
    _bsr_train.parse_options = parse_options
    import basicsr.test as _bsr_test

    _bsr_test.parse_options = parse_options
    if BASICSR_INSTALLED:
        _bsr_utils.mkdir_and_rename = _rerooting(_bsr_utils.mkdir_and_rename, 'path')
        _bsr_train.mkdir_and_rename = _bsr_utils.mkdir_and_rename
        _bsr_utils.init_tb_logger = _rerooting(_bsr_utils.init_tb_logger, 'log_dir')
        _bsr_train.init_tb_logger = _bsr_utils.init_tb_logger


apply()
