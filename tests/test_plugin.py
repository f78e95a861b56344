"""The plugin as BasicSR sees it: start-up hook, registrations, launch styles, CPU resume, output folders.

Every check runs in a fresh interpreter (subprocess), because what is tested is what happens at interpreter start.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, assert_ok, make_unpaired_folders, run_python

BASICSR_DIR = Path(sysconfig.get_paths()['purelib']) / 'basicsr'

#: Every name the plugin registers, by registry (the list is the contract with option files).
EXPECTED = {
    'ARCH_REGISTRY': ['FeedbackUNet', 'PatchGANDiscriminator', 'ExpandNet', 'HDRCNN', 'FHDR', 'SingleHDRUNet'],
    'MODEL_REGISTRY': ['CycleHDRModel', 'PairedHDRModel'],
    'DATASET_REGISTRY': ['UnpairedLDRHDRDataset', 'PairedLDRHDRDataset', 'SingleLDRDataset', 'SingleHDRDataset'],
    'LOSS_REGISTRY': ['LLMPerceptionLoss'],
    'METRIC_REGISTRY': [
        'calculate_psnr_mu',
        'calculate_pu21_psnr',
        'calculate_pu21_ssim',
        'calculate_log_psnr',
        'calculate_cvvdp',
    ],
}

DUMP_REGISTRIES = textwrap.dedent(
    """
    import json, sys
    import basicsr.utils.registry as r
    names = {k: {n: obj.__module__ for n, obj in getattr(r, k)} for k in
             ['ARCH_REGISTRY', 'MODEL_REGISTRY', 'DATASET_REGISTRY', 'LOSS_REGISTRY', 'METRIC_REGISTRY']}
    print(json.dumps({'names': names, 'plugin_loaded': 'llmhdr_basicsr' in sys.modules}))
    """
)


ALIAS_FIRST = 'import torchvision.transforms.functional_tensor as ft; print("alias", callable(ft.rgb_to_grayscale))\n'
#: As llmhdr-infer starts: the package and the classical operators without basicsr; the hook must register them later.
LIGHT_FIRST = textwrap.dedent(
    """
    import sys
    argv, sys.argv = sys.argv, ['llmhdr-infer']
    import llmhdr_basicsr
    from llmhdr_basicsr.archs import itmo_baseline_arch
    sys.argv = argv
    assert 'basicsr' not in sys.modules and 'torchvision' not in sys.modules
    """
)


def _registries(tmp_path: Path, env: dict | None = None, light_first: bool = False) -> dict:
    # the alias is imported first, before basicsr: it must work on its own (and then serve basicsr's import)
    code = (LIGHT_FIRST if light_first else '') + ALIAS_FIRST + DUMP_REGISTRIES
    if light_first:
        code += 'print("same class", r.ARCH_REGISTRY.get("MasiaITMO") is itmo_baseline_arch.MasiaITMO)\n'
    proc = run_python(['-c', code], cwd=tmp_path, env=env)
    assert_ok(proc)
    assert 'alias True' in proc.stdout and ('same class True' in proc.stdout) == light_first
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
    return json.loads(lines[-1])


@pytest.fixture(scope='module')
def registries(tmp_path_factory) -> dict:
    """The registries of a fresh interpreter after only ``import basicsr``, with the plugin and with it disabled."""
    root = tmp_path_factory.mktemp('registries')
    # with the plugin: as llmhdr-infer starts (package and operators without basicsr), then only `import basicsr`
    return {
        'plugin': _registries(root, light_first=True),
        'disabled': _registries(root, env={'BASICSR_PLUGINS_DISABLE': '1'}),
    }


def test_plain_basicsr_import_registers_everything(registries):
    """``import basicsr`` in a fresh interpreter (after the command-line tools' light start, which imports the package
    and the classical operators without basicsr): the .pth hook must have loaded the whole plugin."""
    out = registries['plugin']
    assert out['plugin_loaded']
    for registry, names in EXPECTED.items():
        missing = [n for n in names if n not in out['names'][registry]]
        assert not missing, f'{registry} lacks {missing}'


def test_no_collision_with_basicsr_and_disable_switch(registries):
    plain, with_plugin = registries['disabled'], registries['plugin']
    assert not plain['plugin_loaded']  # the switch turns the auto-load off (the torchvision alias stays) ...
    for registry, names in plain['names'].items():
        # ... and with the plugin every BasicSR name still resolves to BasicSR's own object
        for name, module in names.items():
            assert with_plugin['names'][registry][name] == module
        for name in EXPECTED[registry]:
            assert name not in names, f'{name} collides with a BasicSR {registry} entry'


# ---------------------------------------------------------------------------------------------- training launches
def _smoke_options(tmp_path: Path, name: str, total_iter: int = 2) -> Path:
    ldr, hdr = make_unpaired_folders(tmp_path / 'data', n_ldr=2, n_hdr=2, size=(36, 40))
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_smoke.yml').read_text())
    opt['name'] = name
    opt['datasets']['train'].update(dataroot_ldr=str(ldr), dataroot_hdr=str(hdr), crop_size=32, batch_size_per_gpu=1)
    opt['datasets']['val'].update(dataroot_lq=str(ldr))
    opt['train']['total_iter'] = total_iter
    opt['train']['scheduler']['total_iter'] = 100
    opt['val']['val_freq'] = 100
    opt['logger']['save_checkpoint_freq'] = 2
    path = tmp_path / f'{name}.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


LAUNCHES = {
    'basicsr_script': lambda opt: [str(BASICSR_DIR / 'train.py'), '-opt', str(opt)],
    'basicsr_module': lambda opt: ['-m', 'basicsr.train', '-opt', str(opt)],
    'plugin_module': lambda opt: ['-m', 'llmhdr_basicsr.train', '-opt', str(opt)],
}


def test_launch_styles_train_and_resume_on_cpu(tmp_path):
    """One run continued by every launch style in turn: the plugin's module trains 2 iterations, BasicSR's module
    resumes it to 4 and BasicSR's script (``python basicsr/train.py``) to 6, on CPU; outputs land in the cwd."""
    opt = _smoke_options(tmp_path, 'launches')
    exp = tmp_path / 'experiments' / 'launches'
    for i, launch in enumerate(('plugin_module', 'basicsr_module', 'basicsr_script')):
        total = 2 * (i + 1)
        extra = ['--force_yml', f'train:total_iter={total}'] + (['--auto_resume'] if i else [])
        proc = run_python(LAUNCHES[launch](opt) + extra, cwd=tmp_path)
        assert_ok(proc)
        for net in ('g', 'g_hdr2ldr', 'd_hdr', 'd_ldr'):
            assert (exp / 'models' / f'net_{net}_{total}.pth').is_file(), launch
        assert (exp / 'training_states' / f'{total}.state').is_file(), launch
        if i:
            assert f'Resuming training from epoch: {i - 1}, iter: {total - 2}' in proc.stderr, launch
    assert not (BASICSR_DIR.parent / 'experiments' / 'launches').exists()
    assert not list(tmp_path.glob('experiments/launches_archived_*'))  # resumed, never restarted


def test_stock_srmodel_trains_beside_the_plugin(tmp_path):
    """BasicSR's own SRModel + MSRResNet + PairedImageDataset still train with the plugin loaded."""
    from llmhdr_basicsr.utils.hdr_io import write_ldr

    rng = np.random.default_rng(0)
    for i in range(3):
        gt = rng.random((32, 32, 3))
        write_ldr(tmp_path / 'gt' / f'{i}.png', gt)
        write_ldr(tmp_path / 'lq' / f'{i}.png', gt[::2, ::2])
    opt = {
        'name': 'stock_sr',
        'model_type': 'SRModel',
        'scale': 2,
        'num_gpu': 0,
        'manual_seed': 0,
        'datasets': {
            'train': {
                'name': 'tr',
                'type': 'PairedImageDataset',
                'dataroot_gt': str(tmp_path / 'gt'),
                'dataroot_lq': str(tmp_path / 'lq'),
                'io_backend': {'type': 'disk'},
                'gt_size': 16,
                'use_hflip': True,
                'use_rot': True,
                'num_worker_per_gpu': 0,
                'batch_size_per_gpu': 2,
                'dataset_enlarge_ratio': 1,
                'prefetch_mode': None,
            },  # fmt: skip
        },
        'network_g': {
            'type': 'MSRResNet',
            'num_in_ch': 3,
            'num_out_ch': 3,
            'num_feat': 8,
            'num_block': 1,
            'upscale': 2,
        },
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.999,
            'optim_g': {'type': 'Adam', 'lr': 1e-3},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
            'total_iter': 2,
            'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }
    (tmp_path / 'sr.yml').write_text(yaml.safe_dump(opt))
    assert_ok(run_python(['-m', 'basicsr.train', '-opt', 'sr.yml'], cwd=tmp_path))
    assert (tmp_path / 'experiments' / 'stock_sr' / 'models' / 'net_g_2.pth').is_file()


def test_installed_wheel_carries_the_startup_hook(tmp_path):
    """A normal (non-editable) wheel puts the .pth, .start and boot module at the top of site-packages."""
    src = tmp_path / 'src'  # build from a copy, so the checkout gets no build/ folder
    src.mkdir()
    for item in ('setup.py', 'pyproject.toml', 'README.md', 'startup', 'llmhdr_basicsr'):
        if (REPO / item).is_dir():
            shutil.copytree(REPO / item, src / item, ignore=shutil.ignore_patterns('__pycache__'))
        else:
            shutil.copy2(REPO / item, src / item)
    proc = run_python(['-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path), str(src)],
                      cwd=tmp_path)  # fmt: skip
    assert_ok(proc)
    wheel = next(tmp_path.glob('llmhdr_basicsr-*.whl'))

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {'llmhdr_basicsr.pth', 'llmhdr_basicsr.start', '_llmhdr_basicsr_boot.py'} <= names
    target = tmp_path / 'site'
    zipfile.ZipFile(wheel).extractall(target)
    # -S: no site processing, so the editable install's .pth does not run; the wheel's .pth alone must do the work.
    code = textwrap.dedent(
        f"""
        import site, sys
        sys.path.append({str(BASICSR_DIR.parent)!r})  # dependencies, without running their .pth files
        site.addsitedir({str(target)!r})                  # processes the wheel's llmhdr_basicsr.pth
        import basicsr.utils.registry as r
        import llmhdr_basicsr
        assert llmhdr_basicsr.__file__.startswith({str(target)!r}), llmhdr_basicsr.__file__
        print('FeedbackUNet' in r.ARCH_REGISTRY)
        """
    )
    proc = run_python(['-S', '-c', code], cwd=tmp_path)
    assert_ok(proc)
    assert proc.stdout.strip().endswith('True')
