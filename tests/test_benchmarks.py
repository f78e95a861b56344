"""Smoke tests of the benchmark scripts under benchmarks/, at toy sizes, so that they do not rot.

They check that every section runs end to end and reports well-formed numbers; they do not judge speed (that is the
job of the benchmark itself, run by hand on a quiet machine).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch

from conftest import REPO, SHARED_DATA


def _load(name: str):
    """Import ``benchmarks/<name>.py`` as a module (benchmarks/ is not a package)."""
    module_name = f'_benchmark_{name}'
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / 'benchmarks' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def speed():
    return _load('speed')


def test_speed_reference_cyclegan_generator_has_the_published_size(speed):
    """ResNet-9-block CycleGAN generator at ngf 64: 11,378,179 parameters (the published '11.378 M')."""
    torch.manual_seed(0)
    net = speed.ResnetGenerator(ngf=64)
    assert sum(p.numel() for p in net.parameters()) == 11_378_179
    assert sum(isinstance(m, speed.ResnetBlock) for m in net.modules()) == 9
    assert any(isinstance(m, torch.nn.ReflectionPad2d) for m in net.modules())
    small = speed.ResnetGenerator(ngf=4, num_block=2)
    y = small(torch.rand(1, 3, 32, 40) * 2 - 1)
    assert y.shape == (1, 3, 32, 40)
    assert y.abs().max() < 1


def test_speed_count_macs_covers_forward_and_backward(speed):
    """A 3x3 conv: forward MACs = H W Cin Cout 9; with backward (input and weight gradients) three times that."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
    x = torch.rand(1, 4, 16, 16, requires_grad=True)
    forward = 16 * 16 * 4 * 8 * 9
    assert speed.count_macs(lambda: conv(x)) == forward
    assert speed.count_macs(lambda: conv(x).sum().backward()) == 3 * forward


def test_speed_goals_ratios_and_op_categories(speed):
    assert speed.Goal('a', 0.95, '>=', 0.9).passed is True
    assert speed.Goal('b', 1.2, '<=', 1.1).passed is False
    assert speed.Goal('c', None, '<=', 1.1).passed is None
    assert speed.ratio(3.0, 2.0) == 1.5
    assert speed.ratio(1.0, 0.0) is None
    assert speed.op_category('aten::convolution_backward') == 'convolution'
    assert speed.op_category('aten::native_batch_norm') == 'norm (instance/batch/layer)'
    assert speed.op_category('aten::replication_pad2d') == 'padding'
    assert speed.op_category('aten::sigmoid') == 'element-wise / other'


def test_speed_bad_command_line_is_reported(speed, capsys):
    assert speed.main(['--sections', 'step,warp', '--tiny']) == 2
    assert 'warp' in capsys.readouterr().err
    assert speed.main(['--tiny', '--sections', 'data', '--data', str(REPO / 'no_such_folder')]) == 2
    assert 'no_such_folder' in capsys.readouterr().err


@pytest.mark.slow
def test_speed_tiny_run_of_the_in_process_sections(speed, tmp_path, capsys):
    """step, extras, judge, data and profile at toy size: tables, goals, summary line and a complete JSON file."""
    out = tmp_path / 'speed.json'
    code = speed.main(
        [
            '--tiny',
            '--threads',
            '1',
            '--sections',
            'step,extras,judge,data,profile',
            '--data',
            str(SHARED_DATA),
            '--json',
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert 'Training step' in text and 'Extras' in text and 'Input pipeline' in text
    summary = [line for line in text.splitlines() if line.startswith('SUMMARY')]
    assert len(summary) == 1
    result = json.loads(out.read_text())
    assert result['machine']['torch'] == torch.__version__
    step = result['results']['step']
    ours, ref = step['runs']['CycleHDR [fp32]'], step['runs']['reference CycleGAN [fp32]']
    for run in (ours, ref):
        assert len(run['times']) == 2 and all(t > 0 for t in run['times'])
        assert run['macs'] > 0 and math.isfinite(run['gmac_per_s'])
        assert len(run['cpu_times']) == 2 and all(c > 0 for c in run['cpu_times'])
    assert step['mac_ratio'] == pytest.approx(ours['macs'] / ref['macs'])
    extras = result['results']['extras']
    assert len(extras['ratios']) == 6 and all(v > 0 for v in extras['ratios'].values())
    assert extras['ratios_cpu'].keys() == extras['ratios'].keys()
    assert extras['cache_keys'] == 'from the dataset'
    judge = result['results']['judge']
    assert len(judge['ratios']) == 4 and all(v > 0 for v in judge['ratios'].values())
    on = [name for name in judge['counts'] if name != 'judge off']
    assert len(on) == 3 and all(judge['counts'][n]['submitted'] >= 1 for n in on)  # it really judged every step
    assert result['results']['data']['samples_per_s'] > 0
    profile = result['results']['profile']
    for name in ('CycleHDR', 'reference CycleGAN'):
        assert profile[name]['aten_calls'] > 0
        assert profile[name]['categories']['convolution']['calls'] > 0
    names = {g['name'] for g in result['goals']}
    assert {
        'achieved GMAC/s, ours / reference CycleGAN',
        'heuristic perception on / off',
        'CLIP + SAM / default step',
        'data loader / training step sample rate',
        'judge on (never) amortised / off',
    } <= names
    assert all(g['passed'] in (True, False) for g in result['goals'])


def test_speed_tiny_store_section(speed, tmp_path, capsys):
    """The store section at toy size: a training store of synthesised frames against the same frames read whole."""
    out = tmp_path / 'store.json'
    assert speed.main(['--tiny', '--threads', '1', '--sections', 'store', '--json', str(out)]) == 0
    assert 'Training store (UnpairedLDRHDRDataset' in capsys.readouterr().out
    store = json.loads(out.read_text())['results']['store']
    assert len(store['runs']) == 4 and all(r['samples_per_s'] > 0 for r in store['runs'].values())
    assert store['store_over_whole_0w'] > 0 and store['build_s_per_frame'] > 0


@pytest.mark.slow
def test_speed_infer_child_measures_throughput_and_peak_memory(speed):
    """One tiled run in a child process (the path of the 4K measurement), at toy size."""
    spec = {
        'num_feat': 4,
        'num_iter': 2,
        'device': 'cpu',
        'threads': 1,
        'seed': 0,
        'height': 72,
        'width': 100,
        'tile': 48,
        'overlap': 8,
    }
    result = speed.run_infer_child(spec)
    assert result['megapixels'] == pytest.approx(72 * 100 / 1e6)
    assert result['seconds'] > 0 and result['mp_per_s'] > 0 and result['cpu_seconds'] > 0
    assert 'tile 48 px' in result['path']  # the tiled code path of llmhdr-infer ran
    assert result['peak_rss_bytes'] >= result['rss_after_setup_bytes'] > 50 * 2**20  # torch alone is > 50 MiB


QUALITY_TINY = '--iters 3 --num-feat 4 --crop 32 --threads 1 --no-cvvdp --seeds 0'.split()


def test_quality_tiny_run_prints_both_test_sets_and_writes_json(tmp_path):
    """benchmarks/quality.py end to end on tiny generated scenes, in a fresh interpreter: the three-way split, both
    test sets (in and out of the camera family) with the clipped-region metrics, the goals and the JSON record."""
    import subprocess
    from pathlib import Path

    from conftest import make_unpaired_folders

    repo = Path(__file__).resolve().parents[1]
    make_unpaired_folders(tmp_path / 'data', n_ldr=3, n_hdr=8, size=(40, 48))
    out = tmp_path / 'q.json'
    cmd = [sys.executable, str(repo / 'benchmarks' / 'quality.py'), '--data', str(tmp_path / 'data'),
           '--work', str(tmp_path / 'work'), *QUALITY_TINY, '--json', str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1 = "does not beat the baselines", still a valid run
    assert 'test_ood: test scenes, LDRs from cameras outside the training family' in proc.stdout
    assert 'summary test (CycleHDR [full], 1 seed(s), 3-3 it)' in proc.stdout
    result = json.loads(out.read_text())
    assert set(result['tables']) == {'test', 'test_ood'}
    for table in result['tables'].values():
        assert {'CycleHDR [full]', 'linearize (sRGB)', 'Kovaleski-Oliveira 2014'} <= set(table)
        assert {'pu21_psnr', 'pu21_psnr_clip', 'log2_ratio_clip'} <= set(table['CycleHDR [full]'])
    assert set(result['goals']) == {'test', 'test_ood'}
    assert result['runs']['full'][0]['train']['iterations'] == 3
    # every run was scored on the validation sets too (tuning uses them), and the split has four disjoint parts
    assert set(result['runs']['full'][0]['scores']) == {'val', 'val_ood', 'test', 'test_ood'}
    scenes = result['split']['scenes']
    assert not set(scenes['test']) & set(scenes['val']) and not set(scenes['train_hdr']) & set(scenes['test'])


def test_quality_runs_repeat_exactly_are_reused_and_log_convergence(tmp_path, capsys):
    """Fixed iterations: two fresh runs with the same seed give the same numbers; a third call reuses the stored run
    instead of training again; ``--snapshot-min`` scores each snapshot on the validation set."""
    from conftest import make_unpaired_folders

    quality = _load('quality')
    make_unpaired_folders(tmp_path / 'data', n_ldr=3, n_hdr=8, size=(40, 48))
    results = []
    for run in range(2):
        out = tmp_path / f'q{run}.json'
        argv = ['--data', str(tmp_path / 'data'), '--work', str(tmp_path / f'work{run}'), '--json', str(out)]
        argv += [*QUALITY_TINY, '--snapshot-min', '1e-6', '--eval', 'val']
        assert quality.main(argv) in (0, 1)
        results.append(json.loads(out.read_text()))
    text = capsys.readouterr().out
    assert 'convergence on the validation set' in text and '0 run(s) reused, 1 to train' in text
    first, second = results
    assert first['runs']['full'][0]['scores'] == second['runs']['full'][0]['scores']
    convergence = first['runs']['full'][0]['train']['convergence']
    assert [row['iter'] for row in convergence] == [1, 2, 3]
    val_pu21 = first['tables']['val']['CycleHDR [full]']['pu21_psnr'][0]
    assert convergence[-1]['pu21_psnr'] == pytest.approx(val_pu21)
    argv = ['--data', str(tmp_path / 'data'), '--work', str(tmp_path / 'work0'), *QUALITY_TINY,
            '--snapshot-min', '1e-6', '--eval', 'val']  # fmt: skip
    assert quality.main(argv) in (0, 1)
    assert '1 run(s) reused, 0 to train' in capsys.readouterr().out


def test_quality_rejects_a_bad_decay_fraction(capsys):
    quality = _load('quality')
    with pytest.raises(SystemExit):
        quality.main(['--lr-decay-from', '1.5'])
    assert '--lr-decay-from' in capsys.readouterr().err


def test_baselines_smoke_run_trains_every_method_under_one_protocol(tmp_path):
    """benchmarks/baselines.py --smoke end to end on tiny generated scenes, in a fresh interpreter: pairs made from
    the HDR training scenes only, every peer and the BasicSR arch trained supervised, CycleHDR unpaired, the classical
    operators, one table per test set with the cost columns; the stored runs are reused by a second call."""
    import subprocess
    from pathlib import Path

    from conftest import make_unpaired_folders

    repo = Path(__file__).resolve().parents[1]
    make_unpaired_folders(tmp_path / 'data', n_ldr=3, n_hdr=8, size=(40, 48))
    out = tmp_path / 'b.json'
    cmd = [sys.executable, str(repo / 'benchmarks' / 'baselines.py'), '--data', str(tmp_path / 'data'),
           '--work', str(tmp_path / 'work'), '--smoke', '--seeds', '0', '--threads', '1', '--pairs-per-scene', '2',
           '--json', str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    baselines = _load('baselines')
    split = json.loads((tmp_path / 'work' / 'split' / 'split.json').read_text())
    n_hdr = len(split['scenes']['train_hdr'])
    assert len(list((tmp_path / 'work' / 'pairs' / 'lq').iterdir())) == 2 * n_hdr
    assert set(result['tables']) == {'test', 'test_ood'}
    for table in result['tables'].values():
        learned = [*baselines.SUPERVISED, baselines.CYCLEHDR]
        assert set(learned) | {'linearize (sRGB)', 'Kovaleski-Oliveira 2014'} <= set(table)
        for name in learned:
            row = table[name]
            assert row['pairs'] == (name != baselines.CYCLEHDR) and row['iters'] == 2
            assert row['params'] > 0 and row['gmac_per_mp'] > 0 and row['s_per_mp'] > 0
            assert math.isfinite(row['pu21_psnr'][0]) and math.isfinite(row['pu21_psnr_clip'][0])
        assert table['linearize (sRGB)']['params'] == 0 and not table['linearize (sRGB)']['pairs']
    assert 'GMAC/MP' in proc.stdout and 'test_ood' in proc.stdout
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and f'{len(baselines.SUPERVISED)} supervised run(s) reused, 0 to train' in proc.stdout


def test_baselines_methods_are_chosen_by_short_names():
    """``--methods`` takes comma-free short names (a full name such as 'RRDBNet (BasicSR, scale 1)' has a comma);
    each method has its own, and an unknown one is an argparse error naming the choices."""
    baselines = _load('baselines')
    names = [*baselines.SUPERVISED, 'cyclehdr']
    assert len({baselines.method_key(n) for n in names}) == len(names)
    args = baselines.parse_args(['--methods', 'rrdbnet,ExpandNet,singlehdr,cyclehdr'])
    assert args.method_list == ['RRDBNet (BasicSR, scale 1)', 'ExpandNet', 'SingleHDR(W) U-Net', 'cyclehdr']
    with pytest.raises(SystemExit):
        baselines.parse_args(['--methods', 'rrdb'])


def test_tonemapping_smoke_run_scores_g_x_and_the_operators(tmp_path):
    """benchmarks/tonemapping.py --smoke end to end in a fresh interpreter: the CycleHDR run trained (2 iterations),
    its G_X and the three classical operators scored with TMQI and against both reference renderings; ``--stored``
    then reads the same record without training."""
    import subprocess

    from conftest import make_unpaired_folders

    make_unpaired_folders(tmp_path / 'data', n_ldr=3, n_hdr=8, size=(168, 176))  # TMQI needs >= 161 px
    out, out2 = tmp_path / 't.json', tmp_path / 't2.json'
    cmd = [sys.executable, str(REPO / 'benchmarks' / 'tonemapping.py'), '--data', str(tmp_path / 'data'),
           '--work', str(tmp_path / 'work'), '--smoke', '--seeds', '0', '--threads', '1']  # fmt: skip
    proc = subprocess.run([*cmd, '--json', str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads(out.read_text())['table']
    tonemapping = _load('tonemapping')
    assert set(table) == {tonemapping.GX, *tonemapping.OPERATORS}
    for row in table.values():
        assert set(row) == set(tonemapping.COLUMNS)
        assert 0 <= row['tmqi'][0] <= 1 and 0 <= row['tmqi_s'][0] <= 1 and math.isfinite(row['psnr_ood'][0])
    assert 'TMQI Q' in proc.stdout and 'PSNR ood' in proc.stdout
    proc = subprocess.run([*cmd, '--stored', '--json', str(out2)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'stored run full_seed0.json' in proc.stdout and '[full seed 0] training' not in proc.stdout
    assert json.loads(out2.read_text())['table'] == table


def test_quality_stops_oracle_scores_a_stored_run_with_constant_stops(tmp_path, capsys):
    """``--stops-oracle`` reloads a stored run's G_Y: its predicted stops reproduce the stored validation score, a
    constant replaces them (different scores per constant), and a run that was never trained is a one-line error."""
    from conftest import make_unpaired_folders

    quality = _load('quality')
    make_unpaired_folders(tmp_path / 'data', n_ldr=3, n_hdr=8, size=(40, 48))
    base = ['--data', str(tmp_path / 'data'), '--work', str(tmp_path / 'work'), *QUALITY_TINY, '--eval', 'val']
    base += ['--variants', 'recipe']
    assert quality.main([*base, '--json', str(tmp_path / 'run.json')]) in (0, 1)
    stored = json.loads((tmp_path / 'run.json').read_text())['runs']['recipe'][0]['scores']
    out = tmp_path / 'oracle.json'
    assert quality.main([*base, '--stops-oracle', '0:3:1.5', '--json', str(out)]) == 0
    assert 'expansion stops (PU21-PSNR dB' in capsys.readouterr().out
    result = json.loads(out.read_text())['recipe_seed0']
    for name in ('val', 'val_ood'):
        learned = {k: v[1] for k, v in result[name]['learned'].items()}
        assert learned == pytest.approx({k: v['pu21_psnr'] for k, v in stored[name].items()}, abs=1e-4)
        assert set(result[name]['fixed']) == {'0.0', '1.5', '3.0'}
        assert result[name]['fixed']['0.0'] != result[name]['fixed']['3.0']
    assert quality.main([*base[:-1], 'expansion_s2', '--stops-oracle']) == 2
    assert 'no stored run expansion_s2 seed 0' in capsys.readouterr().err


def test_quality_recipe_variant_matches_the_cpu_recipe_option_file():
    """The ``recipe`` the quality benchmark measures is the one ``options/llmhdr_cpu.yml`` trains (the parts the
    benchmark sets itself, size and schedule, aside): the same generators' bases, expansion, iterations and losses."""
    import yaml

    quality = _load('quality')
    repo = quality.REPO
    cpu = yaml.safe_load((repo / 'options' / 'llmhdr_cpu.yml').read_text())
    args = quality.parse_args([])
    opt = quality.training_options(args, repo / 'split', quality.VARIANTS['recipe'][1])
    for net in ('network_g', 'network_g_hdr2ldr'):
        for key in ('crf_basis', 'num_iter', 'headroom', 'out_domain', 'highlight_expansion'):
            assert opt[net].get(key) == cpu[net].get(key), (net, key)
    assert opt['datasets']['train']['virtual_camera'] == cpu['datasets']['train']['virtual_camera']
    for block in ('cycle_opt', 'camera_opt', 'llm_opt'):
        assert opt['train'][block]['loss_weight'] == cpu['train'][block]['loss_weight'], block
    assert 'gan_opt' not in opt['train'] and cpu['train']['gan_opt']['loss_weight'] == 0
