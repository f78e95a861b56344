"""The option files as users meet them: each training file the README names trains, and every test file runs on its
checkpoint through ``python -m basicsr.test`` without being edited (the architecture comes from the checkpoint).

``options/llmhdr.yml`` (the paper-scale GPU recipe) is copied with tiny widths, crops and iterations;
``options/llmhdr_cpu.yml`` (the CPU recipe) runs with the test data and 3 iterations;
``options/llmhdr_smoke.yml`` runs as shipped, only its data roots made absolute. The test files get only their
checkpoint and data folders, through ``--force_yml`` as the README shows. The runs are forked from one interpreter
that has imported basicsr (:func:`conftest.run_forked`, the ``python -m`` code path without paying the imports eight
times); one test run goes through a fresh ``python -m basicsr.test`` process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, SHARED_DATA, make_unpaired_folders, run_forked, run_python

TRAIN_FILES = ('llmhdr', 'llmhdr_cpu', 'llmhdr_smoke')
TEST_FILES = ('test_llmhdr_paired', 'test_llmhdr_ldr_only', 'test_llmhdr_tonemap')


def _paper_scale_tiny(root: Path, ldr: Path, hdr: Path, paired: Path) -> Path:
    """options/llmhdr.yml with every block kept, only sizes shrunk (and CLIP/SAM absent, as on a fresh machine)."""
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr.yml').read_text())
    opt['name'] = 'paper_tiny'
    opt['num_gpu'] = 0
    for key in ('network_g', 'network_g_hdr2ldr', 'network_d_hdr', 'network_d_ldr'):
        opt[key]['num_feat'] = 4
    for key in ('network_g', 'network_g_hdr2ldr'):
        opt[key]['num_iter'] = 2
    opt['datasets']['train'].update(dataroot_ldr=str(ldr), dataroot_hdr=str(hdr), crop_size=32, batch_size_per_gpu=2,
                                    num_worker_per_gpu=0, dataset_enlarge_ratio=1)  # fmt: skip
    opt['datasets']['val'].update(dataroot_lq=str(paired / 'lq'), dataroot_gt=str(paired / 'gt'))
    opt['train']['total_iter'] = 3
    opt['train']['scheduler'].update(total_iter=3, decay_start=1)
    opt['val']['val_freq'] = 1000
    opt['val']['metrics'].pop('cvvdp_jod')  # slow; tests/test_metrics.py covers it
    opt['logger'].update(print_freq=1000, print_seconds=0.001, save_checkpoint_freq=1000)  # time-based lines only
    path = root / 'paper_tiny.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def _cpu_recipe_tiny(root: Path, ldr: Path, hdr: Path, paired: Path) -> Path:
    """options/llmhdr_cpu.yml as shipped, with the test data and 3 iterations."""
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_cpu.yml').read_text())
    opt['datasets']['train'].update(dataroot_ldr=str(ldr), dataroot_hdr=str(hdr), crop_size=32,
                                    num_worker_per_gpu=0, dataset_enlarge_ratio=1)  # fmt: skip
    opt['datasets']['val'].update(dataroot_lq=str(paired / 'lq'), dataroot_gt=str(paired / 'gt'))
    opt['train']['total_iter'] = 3
    opt['train']['scheduler'].update(total_iter=3, decay_start=1)
    opt['val'].update(val_freq=1000)
    opt['val']['metrics'].pop('cvvdp_jod')  # slow; tests/test_metrics.py covers it
    opt['logger'].update(save_checkpoint_freq=1000)
    path = root / 'cpu_tiny.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Every training option file trained (two processes at a time): ``{train file: (experiment dir, opt file)}``."""
    root = tmp_path_factory.mktemp('option_files')
    from llmhdr_basicsr.utils.hdr_io import read_hdr, write_hdr, write_ldr
    from llmhdr_basicsr.utils.tonemap import srgb_encode_np

    ldr, hdr = make_unpaired_folders(root / 'data', n_ldr=3, n_hdr=3, size=(40, 48))
    paired = root / 'paired'
    for p in sorted(hdr.iterdir()):
        gt = read_hdr(p)
        write_hdr(paired / 'gt' / p.name, gt)
        write_ldr(paired / 'lq' / f'{p.stem}.png', srgb_encode_np(gt / gt.max() * 4))
    smoke = yaml.safe_load((REPO / 'options' / 'llmhdr_smoke.yml').read_text())
    shared = ['--force_yml', f'datasets:train:dataroot_ldr={SHARED_DATA / "ldr"}',
              f'datasets:train:dataroot_hdr={SHARED_DATA / "hdr"}', f'datasets:val:dataroot_lq={SHARED_DATA / "ldr"}',
              'logger:use_tb_logger=true']  # fmt: skip
    commands = {
        'llmhdr': ['-m', 'llmhdr_basicsr.train', '-opt', str(_paper_scale_tiny(root, ldr, hdr, paired)),
                   '--force_yml', 'logger:use_tb_logger=true'],
        'llmhdr_cpu': ['-m', 'llmhdr_basicsr.train', '-opt', str(_cpu_recipe_tiny(root, ldr, hdr, paired))],
        'llmhdr_smoke': ['-m', 'basicsr.train', '-opt', str(REPO / 'options' / 'llmhdr_smoke.yml'), *shared],
    }  # fmt: skip
    experiments = {'llmhdr': root / 'experiments' / 'paper_tiny', 'llmhdr_cpu': root / 'experiments' / 'llmhdr_cpu',
                   'llmhdr_smoke': root / 'experiments' / smoke['name']}  # fmt: skip
    data = {'ldr': ldr, 'hdr': hdr, 'paired': paired}
    tests = _test_jobs(experiments, data)
    fresh = ('llmhdr_smoke', 'test_llmhdr_paired')  # this one runs in a fresh interpreter, in the test below
    forked = [key for key in tests if key != fresh]
    cases = [(a[1], a[2:], 0) for a in commands.values()] + [(tests[k][1], tests[k][2:], 1) for k in forked]
    results = run_forked(cases, cwd=root, parallel=2)  # trainings first (group 0), then the test runs (group 1)
    for name, result in zip(commands, results):
        assert result['code'] == 0, f'{name}:\n{result["output"][-3000:]}'
        assert 'Traceback' not in result['output']
    test_results = dict(zip(forked, results[len(commands) :]))
    return root, experiments, data, tests, test_results


def _test_jobs(experiments: dict, data: dict) -> dict[tuple[str, str], list[str]]:
    """``(train file, test file) -> python args``: the shipped test file, its checkpoint and data via --force_yml."""
    roots = {
        'test_llmhdr_paired': [f'datasets:test_1:dataroot_lq={data["paired"] / "lq"}',
                               f'datasets:test_1:dataroot_gt={data["paired"] / "gt"}',
                               'val:metrics:cvvdp_jod:type=calculate_log_psnr'],  # cvvdp is slow (test_metrics.py)
        'test_llmhdr_ldr_only': [f'datasets:test_1:dataroot_lq={data["ldr"]}'],
        'test_llmhdr_tonemap': [f'datasets:test_1:dataroot_hdr={data["hdr"]}'],
    }  # fmt: skip
    jobs = {}
    for train in TRAIN_FILES:
        models = experiments[train] / 'models'
        for test in TEST_FILES:
            args = ['num_gpu=0', f'name={train}__{test}', f'path:pretrain_network_g={models / "net_g_latest.pth"}',
                    *roots[test]]  # fmt: skip
            if test == 'test_llmhdr_tonemap':
                args.append(f'path:pretrain_network_g_hdr2ldr={models / "net_g_hdr2ldr_latest.pth"}')
            jobs[train, test] = ['-m', 'basicsr.test', '-opt', str(REPO / 'options' / f'{test}.yml'), '--force_yml',
                                 *args]  # fmt: skip
    return jobs


def test_every_test_option_file_runs_on_every_training_checkpoint(trained):
    root, _, _, tests, results = trained
    from llmhdr_basicsr.utils.hdr_io import read_hdr

    fresh = ('llmhdr_smoke', 'test_llmhdr_paired')
    proc = run_python(tests[fresh], cwd=root)
    results = {**results, fresh: {'code': proc.returncode, 'output': proc.stdout + proc.stderr}}
    assert sorted(results) == sorted((train, test) for train in TRAIN_FILES for test in TEST_FILES)
    for (train, test), result in results.items():
        assert result['code'] == 0, f'{train} + {test}:\n{result["output"][-3000:]}'
        assert 'Traceback' not in result['output']
        out = next((root / 'results' / f'{train}__{test}' / 'visualization').iterdir())
        if test == 'test_llmhdr_tonemap':
            assert len(list(out.glob('*_CycleHDR.png'))) == 3, (train, test)
            continue
        exrs = sorted(out.glob('*_CycleHDR.exr'))
        assert len(exrs) == 3 and all((out / f'{e.stem}_reinhard.png').is_file() for e in exrs), (train, test)
        assert read_hdr(exrs[0]).max() > 0
        if test == 'test_llmhdr_paired':
            log = next((root / 'results' / f'{train}__{test}').glob('test_*.log')).read_text()
            assert 'pu21_psnr' in log and 'psnr_mu' in log


def test_training_logs_time_based_progress_and_tensorboard_scalars(trained):
    """The paper-scale copy has print_freq 1000 and print_seconds ~0: every iteration still prints a progress line
    (it/s, ETA, learning rate, losses); tensorboard gets losses/, d_out/ and lr/ scalars. The smoke run as shipped
    writes its checkpoints, previews and validation images."""
    root, experiments, *_ = trained
    log = next(experiments['llmhdr'].glob('train_*.log')).read_text()
    lines = [line for line in log.splitlines() if 'it/s' in line]
    assert len(lines) == 3 and all('eta:' in line and 'lr:(' in line and 'l_g_cycle_ldr' in line for line in lines)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for train, name in (('llmhdr', 'paper_tiny'), ('llmhdr_smoke', experiments['llmhdr_smoke'].name)):
        events = EventAccumulator(str(root / 'tb_logger' / name), size_guidance={'images': 0}).Reload()
        tags = events.Tags()['scalars']
        assert any(t.startswith('losses/l_g_cycle') for t in tags), (train, tags)
        assert {'lr/g', 'lr/d', 'd_out/out_d_hdr_real'} <= set(tags), (train, tags)
        assert not any(t.startswith('out_d_') for t in tags)
    smoke = experiments['llmhdr_smoke']
    events = EventAccumulator(str(root / 'tb_logger' / smoke.name), size_guidance={'images': 0}).Reload()
    assert len(events.Tags()['images']) >= 4  # tone-mapped validation previews
    assert (smoke / 'models' / 'net_g_latest.pth').is_file()
    # validation at iteration 4 and once more after training (BasicSR logs it as iteration 5): 8 images each
    assert sorted(p.name for p in (smoke / 'visualization').iterdir()) == sorted(
        p.stem for p in (SHARED_DATA / 'ldr').glob('*.png')
    )
    assert len(list((smoke / 'visualization').rglob('*.exr'))) == 16


def test_training_checkpoint_drives_llmhdr_infer(trained):
    """The paper-scale checkpoint records its architecture: llmhdr-infer needs only --weights."""
    root, experiments, data, *_ = trained
    from llmhdr_basicsr import infer

    weights = str(experiments['llmhdr'] / 'models' / 'net_g_latest.pth')
    assert infer.main(['-i', str(data['ldr']), '-o', str(root / 'infer_out'), '--weights', weights, '--device', 'cpu',
                       '--quiet']) == 0  # fmt: skip
    outputs = sorted((root / 'infer_out').glob('*.exr'))
    assert [p.name for p in outputs] == sorted(f'{p.stem}.exr' for p in data['ldr'].iterdir())
    from llmhdr_basicsr.utils.hdr_io import read_hdr

    assert all(np.isfinite(read_hdr(p)).all() for p in outputs)


def test_example_validation_set_tells_a_trained_model_from_an_untrained_one(trained):
    """datasets/example/val_* comes from varied camera curves, not the sRGB inverse an untrained generator applies: the
    untrained generator is far from perfect there (with the former sRGB-camera set it scored 36 dB) and the smoke
    model trained a few iterations scores differently."""
    _, experiments, *_ = trained
    import torch
    from basicsr.archs import build_network

    from llmhdr_basicsr.infer import load_network
    from llmhdr_basicsr.metrics.hdr_metric import compute_hdr_metrics
    from llmhdr_basicsr.utils.hdr_io import read_hdr, read_ldr
    from llmhdr_basicsr.utils.tonemap import model_to_hdr

    loaded = load_network('ldr2hdr', str(experiments['llmhdr_smoke'] / 'models' / 'net_g_latest.pth'))
    scores = {}
    for name, net in (('trained', loaded.net), ('untrained', build_network(dict(loaded.arch_opt)))):
        values = []
        for ldr_path in sorted((REPO / 'datasets' / 'example' / 'val_ldr').glob('*.png')):
            ldr = read_ldr(str(ldr_path))
            with torch.no_grad():
                out = net.eval()(torch.from_numpy(ldr).permute(2, 0, 1)[None])
            pred = model_to_hdr(out, net.headroom)[0].permute(1, 2, 0).numpy()
            gt = read_hdr(str(REPO / 'datasets' / 'example' / 'val_hdr' / f'{ldr_path.stem}.hdr'))
            values.append(compute_hdr_metrics(pred, gt, names=['pu21_psnr'])['pu21_psnr'])
        scores[name] = float(np.mean(values))
    assert scores['untrained'] < 30.0, scores
    assert abs(scores['trained'] - scores['untrained']) > 0.01, scores
