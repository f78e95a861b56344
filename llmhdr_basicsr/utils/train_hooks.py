"""Hooks in BasicSR's unchanged training loop (``basicsr.train.train_pipeline``): progress, exact resume, workers.

``train_pipeline`` looks up ``MessageLogger``, ``build_model``, ``CPUPrefetcher`` and ``EnlargedSampler`` in the
globals of the module it is defined in (``basicsr.train``, or ``__main__`` for ``python basicsr/train.py``) each time
it runs. :func:`install` (called by the plugin's ``parse_options`` wrapper, i.e. at the start of every training run)
replaces them there with

- :class:`~llmhdr_basicsr.utils.progress.ProgressLogger` (time-based progress lines, correct ETA, lr scalars);
- a ``build_model`` whose model reports each training step to the progress logger and validates without consuming
  random numbers (:func:`~llmhdr_basicsr.utils.rng_state.preserved_rng_state`);
- :class:`~llmhdr_basicsr.utils.rng_state.ResumablePrefetcher` / :class:`~llmhdr_basicsr.utils.rng_state.
  ResumableSampler` (a resumed run continues the interrupted epoch batch for batch);
- a ``build_dataset`` whose option errors name the dataset block (``datasets.train: option crop_size ...``; also in
  ``basicsr.test``, :func:`install_test`);

and caps the training loader's workers at the CPUs this process may use (:func:`cap_workers`). Messages that arise
before BasicSR's logger exists (it must be created first) are kept in :data:`NOTES` and logged when the model is
built.
"""

from __future__ import annotations

import os

from llmhdr_basicsr.utils import progress, rng_state
from llmhdr_basicsr.utils.errors import OptionError, basicsr_script_main, one_line

NOTES: list[str] = []  # info lines for the training log, emitted once the logger exists
_OPT: list = [None]  # the options of the running pipeline (to name the dataset block of an error)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cap_workers(opt: dict) -> None:
    """Limit ``datasets.train.num_worker_per_gpu`` so that no more loader workers than CPUs are started.

    BasicSR starts ``num_worker_per_gpu * num_gpu`` workers (one GPU's worth on CPU) per process; more workers than
    CPUs only compete with the training step for the same cores and multiply the memory of the dataset copies.
    """
    block = (opt.get('datasets') or {}).get('train')
    if not block:
        return
    per_gpu = int(block.get('num_worker_per_gpu', 0) or 0)
    processes = opt.get('world_size', 1) if opt.get('dist') else 1
    multiplier = 1 if opt.get('dist') or not opt.get('num_gpu') else int(opt['num_gpu'])
    cpus = available_cpus()
    total = per_gpu * multiplier * processes
    if total <= cpus:
        return
    capped = max(cpus // (multiplier * processes), 0)
    block['num_worker_per_gpu'] = capped
    NOTES.append(
        f'datasets.train.num_worker_per_gpu: {per_gpu} -> {capped} (this machine has {cpus} CPU(s) for '
        f'{multiplier * processes} loader(s); more workers would only compete with training for them)'
    )


def hook_model(model) -> None:
    """Report each ``optimize_parameters`` call to the running progress logger; validate RNG-neutrally."""
    step = model.optimize_parameters
    validation = model.validation

    def optimize_parameters(current_iter):
        logger = progress._CURRENT[0]
        if logger is not None:
            logger.step_begins()
        step(current_iter)
        if logger is not None:
            logger.model = model
            if logger.step_done(current_iter):
                log_vars = {'epoch': rng_state.POSITION.epoch, 'iter': current_iter}
                log_vars.update(lrs=model.get_current_learning_rate(), **model.get_current_log())
                logger(log_vars)

    def validation_without_rng(*args, **kwargs):
        with rng_state.preserved_rng_state():
            return validation(*args, **kwargs)

    model.optimize_parameters = optimize_parameters
    model.validation = validation_without_rng


def _wrap_build_model(build_model):
    if getattr(build_model, '_llmhdr_hooked', False):
        return build_model

    def wrapped(opt):
        model = build_model(opt)
        hook_model(model)
        if NOTES:
            from basicsr.utils import get_root_logger

            logger = get_root_logger()
            for note in NOTES:
                logger.info(note)
            NOTES.clear()
        return model

    wrapped._llmhdr_hooked = True
    wrapped.__wrapped__ = build_model
    return wrapped


def _wrap_build_dataset(build_dataset):
    """``build_dataset`` whose option errors name the dataset block (``datasets.train: option crop_size ...``)."""
    if getattr(build_dataset, '_llmhdr_hooked', False):
        return build_dataset

    def wrapped(dataset_opt):
        try:
            return build_dataset(dataset_opt)
        except (ValueError, TypeError, KeyError) as err:
            if isinstance(err, OptionError):
                raise
            key = next((k for k, v in (_OPT[0] or {}).get('datasets', {}).items() if v is dataset_opt), None)
            name = str(dataset_opt.get('name', ''))
            text = one_line(err)
            text = text[len(name) + 2 :] if name and text.startswith(f'{name}: ') else text
            where = f'datasets.{key}' if key else f'dataset {name}'
            raise OptionError(f'{where}: {text}') from err

    wrapped._llmhdr_hooked = True
    wrapped.__wrapped__ = build_dataset
    return wrapped


def train_namespaces() -> list[dict]:
    """Globals of the modules whose ``train_pipeline`` may run: ``basicsr.train`` and BasicSR's script as __main__."""
    import basicsr.train

    spaces = [vars(basicsr.train)]
    main = basicsr_script_main('train')
    if main is not None and main is not basicsr.train:
        spaces.append(vars(main))
    return spaces


def test_namespaces() -> list[dict]:
    """Globals of ``basicsr.test`` and of BasicSR's ``test.py`` run as __main__."""
    import basicsr.test

    spaces = [vars(basicsr.test)]
    main = basicsr_script_main('test')
    if main is not None and main is not basicsr.test:
        spaces.append(vars(main))
    return spaces


def install(opt: dict) -> None:
    """Install the hooks in BasicSR's training loop (idempotent) and cap the loader workers of ``opt``."""
    _OPT[0] = opt
    for space in train_namespaces():
        space['MessageLogger'] = progress.ProgressLogger
        space['CPUPrefetcher'] = rng_state.ResumablePrefetcher
        space['EnlargedSampler'] = rng_state.ResumableSampler
        for name, wrap in (('build_model', _wrap_build_model), ('build_dataset', _wrap_build_dataset)):
            if name in space:
                space[name] = wrap(space[name])
    cap_workers(opt)


def install_test(opt: dict) -> None:
    """For ``test.py``: dataset option errors that name their block."""
    _OPT[0] = opt
    for space in test_namespaces():
        if 'build_dataset' in space:
            space['build_dataset'] = _wrap_build_dataset(space['build_dataset'])
