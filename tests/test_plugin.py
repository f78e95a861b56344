"""The plugin as BasicSR sees it: start-up hook, registrations, launch styles, CPU resume, output folders.

Every check runs in a fresh interpreter (subprocess), because what is tested is what happens at interpreter start.
"""

from __future__ import annotations

import json
import os
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
    'ARCH_REGISTRY': ['FeedbackUNet', 'PatchGANDiscriminator'],
    'MODEL_REGISTRY': ['CycleHDRModel'],
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


def _registries(tmp_path: Path, env: dict | None = None) -> dict:
    proc = run_python(['-c', DUMP_REGISTRIES], cwd=tmp_path, env=env)
    assert_ok(proc)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_plain_basicsr_import_registers_everything(tmp_path):
    """Only ``import basicsr`` in a fresh interpreter: the .pth hook must have loaded the plugin."""
    out = _registries(tmp_path)
    assert out['plugin_loaded']
    for registry, names in EXPECTED.items():
        missing = [n for n in names if n not in out['names'][registry]]
        assert not missing, f'{registry} lacks {missing}'


def test_no_collision_with_basicsr_and_disable_switch(tmp_path):
    plain = _registries(tmp_path, env={'BASICSR_PLUGINS_DISABLE': '1'})
    assert not plain['plugin_loaded']  # the switch turns the auto-load off ...
    with_plugin = _registries(tmp_path)
    for registry, names in plain['names'].items():
        # ... and with the plugin every BasicSR name still resolves to BasicSR's own object
        for name, module in names.items():
            assert with_plugin['names'][registry][name] == module
        for name in EXPECTED[registry]:
            assert name not in names, f'{name} collides with a BasicSR {registry} entry'


def test_torchvision_alias_in_fresh_interpreter(tmp_path):
    code = 'import torchvision.transforms.functional_tensor as ft; import basicsr; print(callable(ft.rgb_to_grayscale))'
    proc = run_python(['-c', code], cwd=tmp_path, env={'BASICSR_PLUGINS_DISABLE': '1'})
    assert_ok(proc)
    assert proc.stdout.strip().endswith('True')


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


@pytest.mark.parametrize('launch', sorted(LAUNCHES))
def test_launch_styles_train_and_resume_on_cpu(tmp_path, launch):
    """Each launch style trains the smoke model and resumes it on CPU; outputs land in the cwd."""
    opt = _smoke_options(tmp_path, f'launch_{launch}')
    assert_ok(run_python(LAUNCHES[launch](opt), cwd=tmp_path))
    exp = tmp_path / 'experiments' / f'launch_{launch}'
    for net in ('g', 'g_hdr2ldr', 'd_hdr', 'd_ldr'):
        assert (exp / 'models' / f'net_{net}_2.pth').is_file()
    assert (exp / 'training_states' / '2.state').is_file()
    assert not (BASICSR_DIR.parent / 'experiments' / f'launch_{launch}').exists()

    proc = run_python(LAUNCHES[launch](opt) + ['--auto_resume', '--force_yml', 'train:total_iter=4'], cwd=tmp_path)
    assert_ok(proc)
    assert (exp / 'training_states' / '4.state').is_file()
    assert 'Resuming training from epoch' in proc.stderr + proc.stdout + _log_text(exp)


def _log_text(exp: Path) -> str:
    return '\n'.join(p.read_text() for p in exp.glob('train_*.log'))


def test_console_script_and_misspelt_type(tmp_path):
    opt = _smoke_options(tmp_path, 'misspelt')
    data = yaml.safe_load(opt.read_text())
    data['network_g']['type'] = 'FeedbackUnet'
    opt.write_text(yaml.safe_dump(data))
    script = Path(os.path.dirname(os.sys.executable)) / 'llmhdr-train'
    proc = run_python([str(script), '-opt', str(opt)], cwd=tmp_path)
    assert proc.returncode != 0
    assert "No object named 'FeedbackUnet' found in 'arch' registry" in proc.stderr
    assert "Did you mean 'FeedbackUNet'" in proc.stderr
    assert 'PatchGANDiscriminator' in proc.stderr  # the available names are listed


def test_unknown_option_key_is_reported(tmp_path):
    opt = _smoke_options(tmp_path, 'unknown_key')
    data = yaml.safe_load(opt.read_text())
    data['train']['cycel_opt'] = data['train'].pop('cycle_opt')
    opt.write_text(yaml.safe_dump(data))
    proc = run_python(['-m', 'llmhdr_basicsr.train', '-opt', str(opt)], cwd=tmp_path)
    assert_ok(proc)
    assert "'cycel_opt' (did you mean 'cycle_opt'?)" in proc.stderr + proc.stdout


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
