"""llmhdr-infer, llmhdr-tonemap and llmhdr-eval on tiny generated images with tiny checkpoints (CPU)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, assert_ok, run_python
from llmhdr_basicsr import evaluate, infer, tonemap_cli
from llmhdr_basicsr.archs.feedback_unet_arch import FeedbackUNet
from llmhdr_basicsr.archs.itmo_baseline_arch import MasiaITMO
from llmhdr_basicsr.metrics import hdr_metric as hm
from llmhdr_basicsr.utils.device import check_half, select_device
from llmhdr_basicsr.utils.hdr_io import read_hdr, read_image, write_hdr, write_ldr
from llmhdr_basicsr.utils.tonemap import luminance_np, mu_law_inverse, srgb_decode_np, tonemap_preview

KW = dict(num_feat=4, lstm_feat=6, num_iter=2, headroom=4)
FAST = ['--quiet', '--device', 'cpu']


def perturbed(net, seed=1, std=0.3):
    """Re-draw the zero-initialised head and gates so that the output depends on the weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith('head') or 'gate' in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


def ldr_image(h, w, seed=0, grey=False):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([xx, yy, 0.5 * (xx + yy)], -1) * 0.8 + rng.normal(0, 0.03, (h, w, 3))
    img[: h // 4, : w // 4] = 1.0  # clipped highlight
    img = np.clip(img, 0, 1)
    return img[..., 0] if grey else img


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Tiny checkpoints (BasicSR ``{'params'}`` layout), an option file, and LDR / HDR input folders."""
    root = tmp_path_factory.mktemp('cli')
    torch.manual_seed(0)
    g_y = FeedbackUNet(**KW)  # untrained: exactly its residual base
    g_x = FeedbackUNet(out_domain='ldr', **KW)
    torch.save({'params': g_y.state_dict()}, root / 'net_g_10.pth')
    torch.save({'params': perturbed(g_x).state_dict()}, root / 'net_g_hdr2ldr_10.pth')
    ema = perturbed(FeedbackUNet(**KW), seed=5)
    torch.save({'params': g_y.state_dict(), 'params_ema': ema.state_dict()}, root / 'net_g_ema.pth')
    opt = {
        'network_g': {'type': 'FeedbackUNet', **KW},
        'network_g_hdr2ldr': {'type': 'FeedbackUNet', 'out_domain': 'ldr', **KW},
    }
    (root / 'opt.yml').write_text(yaml.safe_dump(opt))
    ldr = root / 'ldr'
    write_ldr(ldr / 'rgb8.png', ldr_image(40, 56))
    write_ldr(ldr / 'rgb16.png', ldr_image(33, 47, seed=1), bit_depth=16)
    write_ldr(ldr / 'grey.png', ldr_image(30, 36, seed=2, grey=True))
    (ldr / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n this is not an image')
    hdr = root / 'hdr'
    rng = np.random.default_rng(3)
    for i in range(2):
        img = (rng.random((36, 44, 3)) * 2 + 0.05).astype(np.float32)
        img[5:9, 5:9] = 80.0
        write_hdr(hdr / f'scene{i}.hdr', img)
    write_ldr(hdr / 'preview.png', ldr_image(20, 20))  # an LDR file in the HDR folder: ignored by hdr2ldr
    return root


def run_infer(argv, capsys=None):
    code = infer.main([str(a) for a in argv])
    out = capsys.readouterr() if capsys is not None else None
    return code, out


# ------------------------------------------------------------------------------------------------------ infer
@pytest.mark.slow
def test_infer_subprocess_folder_with_corrupt_file(setup, tmp_path):
    """``python -m llmhdr_basicsr.infer`` on a folder: 8-bit, 16-bit and grey inputs written with their names,
    the corrupt file skipped and listed, exit status 1 (a batch job must notice), no OpenCV/libpng lines."""
    out = tmp_path / 'out'
    args = [
        '-m',
        'llmhdr_basicsr.infer',
        '-i',
        setup / 'ldr',
        '-o',
        out,
        '--weights',
        setup / 'net_g_10.pth',
        '-opt',
        setup / 'opt.yml',
        '--tile',
        '32',
        '--tile-overlap',
        '8',
        *FAST,
    ]
    proc = run_python([str(a) for a in args], cwd=REPO, env={'OMP_NUM_THREADS': '1'})  # tiny tensors: 1 thread
    assert proc.returncode == 1, proc.stderr
    assert 'Skipped 1 file(s)' in proc.stdout and 'corrupt.png' in proc.stdout
    assert 'libpng' not in proc.stderr and '[ WARN' not in proc.stderr and 'Traceback' not in proc.stderr
    for stem, shape in (('rgb8', (40, 56, 3)), ('rgb16', (33, 47, 3)), ('grey', (30, 36, 3))):
        hdr = read_hdr(out / f'{stem}.exr')
        assert hdr.shape == shape and np.isfinite(hdr).all() and hdr.min() >= 0
        preview, is_hdr = read_image(out / f'{stem}_reinhard.png')
        assert not is_hdr and preview.shape == shape
    assert not (out / 'corrupt.exr').exists()


def test_untrained_generator_writes_the_linearised_input(setup, tmp_path, capsys):
    """An untrained FeedbackUNet returns its base mu_law(srgb_decode(x) / 2^headroom) exactly, so the written EXR must
    be srgb_decode(x) in the relative scale (white = 1): checks the mu-law / headroom conversion end to end."""
    code, _ = run_infer(
        [
            '-i',
            setup / 'ldr' / 'rgb16.png',
            '-o',
            tmp_path,
            '--weights',
            setup / 'net_g_10.pth',
            '-opt',
            setup / 'opt.yml',
            '--preview',
            'none',
            *FAST,
        ],
        capsys,
    )
    assert code == 0
    expected = srgb_decode_np(read_image(setup / 'ldr' / 'rgb16.png')[0])
    np.testing.assert_allclose(read_hdr(tmp_path / 'rgb16.exr'), expected, atol=2e-3, rtol=1e-3)
    assert not (tmp_path / 'rgb16_none.png').exists()


def test_all_corrupt_exits_nonzero(tmp_path, setup, capsys):
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'a.png').write_bytes(b'garbage')
    (bad / 'b.jpg').write_bytes(b'')
    code, out = run_infer(
        ['-i', bad, '-o', tmp_path / 'o', '--weights', setup / 'net_g_10.pth', '-opt', setup / 'opt.yml', *FAST], capsys
    )
    assert code == 1
    assert 'Done: 0 of 2' in out.out and 'a.png' in out.out and 'b.jpg' in out.out


def test_tiled_cli_matches_untiled(setup, tmp_path, capsys):
    """A trained-like checkpoint (arch recorded in the file, no -opt) on an image larger than one tile: tiles with
    full-image statistics reproduce the untiled output within 1 % (relative, linear HDR)."""
    torch.manual_seed(0)  # the weights perturbed() keeps come from the global generator: fixed, whatever ran before
    net = perturbed(FeedbackUNet(**KW), seed=7)
    ckpt = tmp_path / 'own.pth'
    infer.save_inference_checkpoint(str(ckpt), net.state_dict(), {'type': 'FeedbackUNet', **KW})
    src = tmp_path / 'big.png'
    write_ldr(src, ldr_image(72, 88, seed=4))
    common = ['-i', src, '--weights', ckpt, '--preview', 'none', *FAST]
    assert run_infer([*common, '-o', tmp_path / 'untiled', '--tile', '0'], capsys)[0] == 0
    code, out = run_infer(
        [*common, '-o', tmp_path / 'tiled', '--tile', '48', '--tile-overlap', '24', '--tile-global-size', '0'], capsys
    )
    assert code == 0 and 'tile 48 px' in out.out
    a, b = read_hdr(tmp_path / 'untiled' / 'big.exr'), read_hdr(tmp_path / 'tiled' / 'big.exr')
    assert np.abs(a - b).max() / a.max() < 1e-2


def test_param_key_defaults_to_ema(setup, tmp_path, capsys):
    src = setup / 'ldr' / 'rgb8.png'
    outs = {}
    for key in ('auto', 'params_ema', 'params'):
        code, out = run_infer(
            [
                '-i',
                src,
                '-o',
                tmp_path / key,
                '--weights',
                setup / 'net_g_ema.pth',
                '-opt',
                setup / 'opt.yml',
                '--param-key',
                key,
                '--preview',
                'none',
                *FAST,
            ],
            capsys,
        )
        assert code == 0
        outs[key] = read_hdr(tmp_path / key / 'rgb8.exr')
    assert '[params]' in out.out
    np.testing.assert_array_equal(outs['auto'], outs['params_ema'])
    assert np.abs(outs['auto'] - outs['params']).max() > 1e-3


def test_checkpoint_problems_are_clear_errors(setup, tmp_path, capsys):
    src = setup / 'ldr' / 'rgb8.png'
    # plain BasicSR checkpoint without -opt: the architecture is unknown
    code, out = run_infer(['-i', src, '-o', tmp_path, '--weights', setup / 'net_g_10.pth', *FAST], capsys)
    assert code == 2 and 'pass -opt' in out.err
    # option file and checkpoint disagree (num_feat 8 vs 4): missing/mismatched keys are named
    wrong = tmp_path / 'wrong.yml'
    wrong.write_text(yaml.safe_dump({'network_g': {'type': 'FeedbackUNet', **{**KW, 'num_feat': 8}}}))
    code, out = run_infer(
        ['-i', src, '-o', tmp_path, '--weights', setup / 'net_g_10.pth', '-opt', wrong, *FAST], capsys
    )
    assert code == 2 and 'does not fit' in out.err and 'shape mismatches' in out.err
    # a requested parameter key that the file does not have
    code, out = run_infer(
        [
            '-i',
            src,
            '-o',
            tmp_path,
            '--weights',
            setup / 'net_g_10.pth',
            '-opt',
            setup / 'opt.yml',
            '--param-key',
            'params_ema',
            *FAST,
        ],
        capsys,
    )
    assert code == 2 and "no 'params_ema'" in out.err
    # a network with parameters but no weights
    code, out = run_infer(['-i', src, '-o', tmp_path, '-opt', setup / 'opt.yml', *FAST], capsys)
    assert code == 2 and 'no weights' in out.err


def test_baseline_by_arch_name(setup, tmp_path, capsys):
    src = setup / 'ldr' / 'rgb8.png'
    code, out = run_infer(['-i', src, '-o', tmp_path, '--arch', 'MasiaITMO', '--preview', 'exposure', *FAST], capsys)
    assert code == 0 and 'untiled' in out.out
    x = torch.from_numpy(read_image(src)[0]).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = mu_law_inverse(MasiaITMO()(x))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(read_hdr(tmp_path / 'rgb8.exr'), expected, atol=1e-5, rtol=1e-5)
    assert (tmp_path / 'rgb8_exposure.png').exists()


def test_absolute_scale_puts_the_percentile_at_peak_nits(setup, tmp_path, capsys):
    code, _ = run_infer(
        [
            '-i',
            setup / 'ldr' / 'rgb8.png',
            '-o',
            tmp_path,
            '--arch',
            'AkyuzITMO',
            '--scale',
            'absolute',
            '--peak-nits',
            '400',
            '--ext',
            'pfm',
            '--preview',
            'none',
            *FAST,
        ],
        capsys,
    )
    assert code == 0
    lum = luminance_np(read_hdr(tmp_path / 'rgb8.pfm'))[..., 0]
    assert np.percentile(lum, 99.9) == pytest.approx(400.0, rel=1e-3)


def test_half_precision_is_refused_on_cpu(setup, tmp_path, capsys):
    code, out = run_infer(
        ['-i', setup / 'ldr' / 'rgb8.png', '-o', tmp_path, '--arch', 'MasiaITMO', '--half', '--device', 'cpu'], capsys
    )
    assert code == 2 and '--half needs a CUDA GPU' in out.err
    with pytest.raises(ValueError, match='--half'):
        check_half(torch.device('cpu'), True)
    assert check_half(torch.device('cpu'), False) is torch.float32
    assert select_device('cpu') == torch.device('cpu')
    with pytest.raises(ValueError, match='not a device'):
        select_device('tpu:0')


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message on machines without CUDA')
def test_cuda_request_without_cuda_is_an_error():
    with pytest.raises(ValueError, match='no CUDA device'):
        select_device('cuda:0')
    assert select_device('auto') == torch.device('cpu')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_half_on_cuda_matches_fp32(setup, tmp_path, capsys):
    src = setup / 'ldr' / 'rgb8.png'
    base = ['-i', src, '--weights', setup / 'net_g_ema.pth', '-opt', setup / 'opt.yml', '--preview', 'none', '--quiet']
    assert run_infer([*base, '-o', tmp_path / 'a', '--device', 'cuda'], capsys)[0] == 0
    assert run_infer([*base, '-o', tmp_path / 'b', '--device', 'cuda', '--half'], capsys)[0] == 0
    a, b = read_hdr(tmp_path / 'a' / 'rgb8.exr'), read_hdr(tmp_path / 'b' / 'rgb8.exr')
    assert np.abs(a - b).max() / a.max() < 2e-2


# ----------------------------------------------------------------------------------------------- tone mapping
def test_hdr2ldr_writes_pngs_and_ignores_ldr_files(setup, tmp_path, capsys):
    code, out = run_infer(
        [
            '-i',
            setup / 'hdr',
            '-o',
            tmp_path,
            '--direction',
            'hdr2ldr',
            '--weights',
            setup / 'net_g_hdr2ldr_10.pth',
            '-opt',
            setup / 'opt.yml',
            '--bit-depth',
            '16',
            '--tile',
            '32',
            '--tile-overlap',
            '8',
            *FAST,
        ],
        capsys,
    )
    assert code == 0 and 'Done: 2 of 2' in out.out
    import cv2

    for i in range(2):
        raw = cv2.imread(str(tmp_path / f'scene{i}.png'), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw.shape == (36, 44, 3)
    assert not (tmp_path / 'preview.png').exists() or (tmp_path / 'preview.png').stat().st_size > 0


def test_hdr2ldr_refuses_the_ldr2hdr_generator(setup, tmp_path, capsys):
    ckpt = tmp_path / 'gy.pth'
    infer.save_inference_checkpoint(str(ckpt), FeedbackUNet(**KW).state_dict(), {'type': 'FeedbackUNet', **KW})
    code, out = run_infer(
        ['-i', setup / 'hdr', '-o', tmp_path, '--direction', 'hdr2ldr', '--weights', ckpt, *FAST], capsys
    )
    assert code == 2 and "G_Y (out_domain 'hdr_mu')" in out.err and 'net_g_hdr2ldr_' in out.err


def test_tonemap_refuses_g_y_weights_also_with_the_option_file(setup, tmp_path, capsys):
    """G_Y's weights load into G_X's architecture without complaint (same layers): the checkpoint's arch entry, or
    its BasicSR file name, must stop llmhdr-tonemap with an error that names the file and what to give instead."""
    with_arch = tmp_path / 'net_g_7.pth'
    infer.save_inference_checkpoint(str(with_arch), FeedbackUNet(**KW).state_dict(), {'type': 'FeedbackUNet', **KW})
    for weights in (with_arch, setup / 'net_g_10.pth'):  # arch entry / file name only
        code = tonemap_cli.main([str(a) for a in ['-i', setup / 'hdr', '-o', tmp_path / 'o', '--weights', weights,
                                                  '-opt', setup / 'opt.yml', *FAST]])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and str(weights) in err and 'net_g_hdr2ldr_' in err
    assert not (tmp_path / 'o').exists() or not list((tmp_path / 'o').iterdir())
    g_x = setup / 'net_g_hdr2ldr_10.pth'
    code = tonemap_cli.main([str(a) for a in ['-i', setup / 'hdr', '-o', tmp_path / 'ok', '--weights', g_x,
                                              '-opt', setup / 'opt.yml', *FAST]])  # fmt: skip
    assert code == 0 and len(list((tmp_path / 'ok').glob('*.png'))) == 2


def test_tonemap_cli_network_and_operator(setup, tmp_path, capsys):
    code = tonemap_cli.main(
        [
            str(a)
            for a in [
                '-i',
                setup / 'hdr',
                '-o',
                tmp_path / 'net',
                '--weights',
                setup / 'net_g_hdr2ldr_10.pth',
                '-opt',
                setup / 'opt.yml',
                '--suffix',
                '_G_X',
                *FAST,
            ]
        ]
    )
    assert code == 0 and (tmp_path / 'net' / 'scene0_G_X.png').exists()
    src = setup / 'hdr' / 'scene1.hdr'
    code = tonemap_cli.main(
        [str(a) for a in ['-i', src, '-o', tmp_path / 'op', '--operator', 'reinhard', '--stops', '1', '--quiet']]
    )
    assert code == 0
    x = torch.from_numpy(read_hdr(src)).permute(2, 0, 1)[None]
    expected = tonemap_preview(x, 'reinhard', 1.0)[0].permute(1, 2, 0).numpy()
    got = read_image(tmp_path / 'op' / 'scene1.png')[0]
    np.testing.assert_allclose(got, expected, atol=0.5 / 255 + 1e-6)
    capsys.readouterr()
    assert tonemap_cli.main(['-i', str(src), '-o', str(tmp_path), '--operator', 'mu', '--arch', 'MasiaITMO']) == 2
    assert 'do not pass' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- eval
@pytest.fixture(scope='module')
def hdr_folders(tmp_path_factory):
    """GT folder and a prediction folder with _CycleHDR suffixes, tone-mapped previews and one unmatched file."""
    root = tmp_path_factory.mktemp('eval')
    rng = np.random.default_rng(0)
    gt, pred = root / 'gt', root / 'pred'
    for i in range(2):
        img = (rng.random((24, 32, 3)) * 4 + 0.01).astype(np.float32)
        write_hdr(gt / f'img{i}.exr', img)
        write_hdr(pred / f'img{i}_CycleHDR.exr', img * 3.0)  # a global gain: removed by the alignment
        write_ldr(pred / f'img{i}_CycleHDR_reinhard.png', np.clip(img / 4, 0, 1))
    write_hdr(pred / 'extra_CycleHDR.exr', np.ones((24, 32, 3), np.float32))
    return root


def test_eval_identical_folders_give_ideal_scores(hdr_folders, tmp_path, capsys):
    root = hdr_folders
    csv_path, json_path, plot = tmp_path / 's.csv', tmp_path / 's.json', tmp_path / 's.png'
    code = evaluate.main(
        [
            '--pred',
            str(root / 'pred'),
            '--gt',
            str(root / 'gt'),
            '--pred-suffix',
            '_CycleHDR',
            '--csv',
            str(csv_path),
            '--json',
            str(json_path),
            '--plot',
            str(plot),
            '--quiet',
        ]
    )
    out = capsys.readouterr()
    assert code == 0
    assert 'geomean' in out.out and '99.9th luminance percentile -> 1000 cd/m2' in out.out  # protocol header
    assert 'extra_CycleHDR.exr' in out.err  # unmatched prediction listed
    data = json.loads(json_path.read_text())
    s = data['summary']
    assert s['psnr_mu']['mean'] == 100 and s['log_psnr']['mean'] == 100 and s['pu21_psnr']['mean'] == 100
    assert s['pu21_ssim']['mean'] == pytest.approx(1.0, abs=1e-6)
    assert s['cvvdp']['mean'] == pytest.approx(10.0, abs=1e-3)
    assert all(r['gain'] == pytest.approx(1 / 3, rel=1e-4) for r in data['per_image'])
    assert csv_path.read_text().splitlines()[0] == 'image,pred,gt,gain,psnr_mu,log_psnr,pu21_psnr,pu21_ssim,cvvdp'
    assert plot.stat().st_size > 1000


def test_eval_scores_a_worse_prediction_lower(hdr_folders, tmp_path, capsys):
    worse = tmp_path / 'worse'
    for path in sorted((hdr_folders / 'gt').glob('*.exr')):
        img = read_hdr(path)
        write_hdr(worse / path.name, np.sqrt(img))  # compressed dynamic range
    json_path = tmp_path / 'w.json'
    code = evaluate.main(
        [
            '--pred',
            str(worse),
            '--gt',
            str(hdr_folders / 'gt'),
            '--metrics',
            'psnr_mu,pu21_psnr',
            '--json',
            str(json_path),
            '--quiet',
        ]
    )
    assert code == 0
    s = json.loads(json_path.read_text())['summary']
    assert set(s) == {'psnr_mu', 'pu21_psnr'} and s['psnr_mu']['mean'] < 60 and s['pu21_psnr']['mean'] < 60


def test_eval_without_matches_exits_nonzero_and_lists_files(hdr_folders, capsys):
    code = evaluate.main(
        ['--pred', str(hdr_folders / 'pred'), '--gt', str(hdr_folders / 'gt'), '--metrics', 'psnr_mu', '--quiet']
    )  # no --pred-suffix: nothing matches
    out = capsys.readouterr()
    assert code == 1
    assert 'img0_CycleHDR.exr' in out.out and 'img0.exr' in out.out and 'no prediction matched' in out.err


def test_eval_usage_errors(hdr_folders, capsys, monkeypatch):
    args = ['--pred', str(hdr_folders / 'pred'), '--gt', str(hdr_folders / 'gt'), '--quiet']
    assert evaluate.main([*args, '--metrics', 'psnr_mu,bogus']) == 2
    assert 'bogus' in capsys.readouterr().err
    monkeypatch.delenv('LLMHDR_LPIPS_BACKBONE', raising=False)
    assert evaluate.main([*args, '--metrics', 'lpips']) == 2
    assert 'LLMHDR_LPIPS_BACKBONE' in capsys.readouterr().err


def test_eval_shape_mismatch_is_reported_not_fatal(hdr_folders, tmp_path, capsys):
    pred = tmp_path / 'pred'
    write_hdr(pred / 'img0.exr', read_hdr(hdr_folders / 'gt' / 'img0.exr'))
    write_hdr(pred / 'img1.exr', np.ones((10, 10, 3), np.float32))
    code = evaluate.main(['--pred', str(pred), '--gt', str(hdr_folders / 'gt'), '--metrics', 'psnr_mu', '--quiet'])
    out = capsys.readouterr().out
    assert code == 0 and 'Not scored (1)' in out and 'shapes differ' in out


def test_plot_falls_back_to_bars(hdr_folders, tmp_path):
    plot = Path(tmp_path) / 'bars.png'
    code = evaluate.main(
        [
            '--pred',
            str(hdr_folders / 'gt'),
            '--gt',
            str(hdr_folders / 'gt'),
            '--metrics',
            'log_psnr',
            '--plot',
            str(plot),
            '--quiet',
        ]
    )
    assert code == 0 and plot.stat().st_size > 1000


# ------------------------------------------------------------------------------------------------- start-up
def _imported(stderr: str) -> set[str]:
    """Top-level module names in ``python -X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith('import time:') and line.count('|') == 2:
            names.add(line.rsplit('|', 1)[1].strip().split('.')[0])
    return names


def test_cli_start_up_imports_neither_torch_for_help_nor_basicsr_for_an_operator(setup, tmp_path):
    """``--help`` of the four tools imports no torch (0.3 s instead of 8 s); a classical operator on one image runs
    without basicsr (torch only, about 2.5 s instead of 7 s). Checked by the imports, which do not depend on load."""
    for module in (
        'llmhdr_basicsr.infer',
        'llmhdr_basicsr.tonemap_cli',
        'llmhdr_basicsr.evaluate',
        'llmhdr_basicsr.perceive',
    ):
        proc = run_python(['-X', 'importtime', '-m', module, '--help'], cwd=tmp_path)
        assert_ok(proc)
        assert 'usage:' in proc.stdout
        assert not {'torch', 'basicsr', 'open_clip'} & _imported(proc.stderr), module
    args = ['-X', 'importtime', '-m', 'llmhdr_basicsr.infer', '-i', str(setup / 'ldr' / 'rgb8.png'), '-o', 'out',
            '--arch', 'LinearizeITMO', '--quiet']  # fmt: skip
    proc = run_python(args, cwd=tmp_path, env={'OMP_NUM_THREADS': '1'})
    assert_ok(proc)
    assert (tmp_path / 'out' / 'rgb8.exr').is_file()
    imported = _imported(proc.stderr)
    assert 'torch' in imported and not {'basicsr', 'torchvision', 'open_clip', 'scipy'} & imported


def test_eval_defaults_shown_by_help_are_the_metric_defaults():
    """llmhdr-eval builds its parser from metrics/defaults.py (no basicsr); the values must be hdr_metric's."""
    from llmhdr_basicsr.metrics import defaults

    for name in ('ALIGN_MODES', 'DEFAULT_ALIGN', 'DEFAULT_PEAK_NITS', 'DEFAULT_PERCENTILE', 'CVVDP_DISPLAY'):
        assert getattr(defaults, name) == getattr(hm, name), name
