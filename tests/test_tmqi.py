"""TMQI (tone-mapped image quality index) and ``llmhdr-eval --direction hdr2ldr`` on small synthetic images (CPU)."""

import json
import math

import numpy as np
import pytest
import torch
from basicsr.utils.registry import METRIC_REGISTRY

import llmhdr_basicsr.plugin  # noqa: F401  (registers the metrics)
from llmhdr_basicsr import evaluate
from llmhdr_basicsr.metrics import tmqi_metric as tm
from llmhdr_basicsr.utils.hdr_io import write_hdr, write_ldr

SIZE = 176  # >= 161: the fifth scale needs an 11 x 11 window


def _scene(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """A linear HDR image with ~4 decades of range: smooth gradients, texture and a bright highlight."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.02 + 0.5 * xx + 0.3 * np.sin(6 * yy) ** 2
    texture = 1 + 0.3 * rng.standard_normal((size, size))
    lum = base * np.clip(texture, 0.1, None)
    lum[size // 4 : size // 2, size // 4 : size // 2] *= 200.0  # a lamp
    rgb = lum[..., None] * np.array([1.0, 0.9, 0.8])
    return rgb.astype(np.float32)


def _log_tonemap(hdr: np.ndarray) -> np.ndarray:
    """A reasonable global operator: log luminance stretched to [0, 1], colour ratios kept."""
    lum = hdr @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    log = np.log(lum + 1e-4)
    t = (log - log.min()) / (log.max() - log.min())
    return np.clip(hdr / lum[..., None] * t[..., None], 0, 1).astype(np.float32)


def test_q_is_the_papers_combination_of_s_and_n():
    hdr = _scene()
    (r,) = tm.tmqi(_log_tonemap(hdr), hdr)
    assert 0 < r.S <= 1 and 0 < r.N <= 1 and len(r.s_local) == 5
    assert r.Q == pytest.approx(0.8012 * r.S**0.3046 + 0.1988 * r.N**0.7088, rel=1e-12)
    assert r.S == pytest.approx(math.prod(v**w for v, w in zip(r.s_local, tm.SCALE_WEIGHTS)), rel=1e-12)


def test_naturalness_peaks_at_the_models_mode():
    assert tm.naturalness_from_stats(115.94, 64.29 * 3.4 / 12.5) == pytest.approx(1.0, abs=1e-9)
    assert tm.naturalness_from_stats(60.0, 17.49) < 0.2  # too dark
    assert tm.naturalness_from_stats(115.94, 2.0) < 0.2  # no contrast
    flat = np.full((SIZE, SIZE), 116.0)
    assert tm.statistical_naturalness(flat) == 0.0  # block deviation 0: Beta density 0


def test_a_good_operator_beats_clipping_and_a_flat_image():
    hdr = _scene()
    good = tm.tmqi(_log_tonemap(hdr), hdr)[0]
    clipped = tm.tmqi(np.clip(hdr * 4.0, 0, 1), hdr)[0]  # exposed for the shadows: highlights and mid-tones clip
    flat = tm.tmqi(np.full_like(hdr, 0.45), hdr)[0]
    assert good.S > clipped.S > flat.S
    assert good.Q > clipped.Q > flat.Q
    assert flat.S < 0.05


def test_s_and_q_do_not_depend_on_the_hdr_scale():
    hdr = _scene(1)
    ldr = _log_tonemap(hdr)
    a, b = tm.tmqi(ldr, hdr)[0], tm.tmqi(ldr, hdr * 1234.5)[0]
    assert b.S == pytest.approx(a.S, rel=1e-9) and b.Q == pytest.approx(a.Q, rel=1e-9)


def test_input_layouts_agree():
    hdr = _scene(2)
    ldr = _log_tonemap(hdr)
    ref = tm.tmqi(ldr, hdr)[0].Q
    u8 = np.round(ldr * 255).astype(np.uint8)
    assert tm.tmqi(u8, hdr)[0].Q == pytest.approx(ref, abs=2e-3)  # 8-bit rounding only
    as_tensor = tm.calculate_tmqi(torch.from_numpy(ldr).permute(2, 0, 1), torch.from_numpy(hdr).permute(2, 0, 1))
    assert as_tensor == pytest.approx(ref, rel=1e-9)
    batch = tm.calculate_tmqi(torch.from_numpy(np.stack([ldr, ldr])).permute(0, 3, 1, 2),
                              torch.from_numpy(np.stack([hdr, hdr])).permute(0, 3, 1, 2))  # fmt: skip
    assert batch == pytest.approx(ref, rel=1e-9)


def test_bad_inputs_are_one_line_errors():
    hdr = _scene()
    with pytest.raises(ValueError, match=r'sizes differ: \(176, 176\) vs \(176, 170\)'):
        tm.tmqi(_log_tonemap(hdr), hdr[:, :170])
    with pytest.raises(ValueError, match='at least 161 x 161'):
        tm.tmqi(_log_tonemap(hdr)[:100, :100], hdr[:100, :100])
    with pytest.raises(ValueError, match='must lie in \\[0, 1\\]'):
        tm.tmqi(_log_tonemap(hdr) * 255, hdr)
    with pytest.raises(TypeError, match='uint8'):
        tm.tmqi(np.zeros((SIZE, SIZE, 3), np.int64), hdr)


def test_metrics_are_registered_and_follow_basicsr_calling_convention():
    hdr = _scene()
    ldr = _log_tonemap(hdr)
    q = METRIC_REGISTRY.get('calculate_tmqi')(ldr, hdr, crop_border=4)
    s = METRIC_REGISTRY.get('calculate_tmqi_s')(ldr, hdr, crop_border=4)
    n = METRIC_REGISTRY.get('calculate_tmqi_n')(ldr, None, crop_border=4)
    assert q == pytest.approx(tm.combine(s, n), rel=1e-12)
    with pytest.raises(TypeError, match='calculate_tmqi: unknown option'):
        METRIC_REGISTRY.get('calculate_tmqi')(ldr, hdr, bogus=1)
    scores = tm.compute_tmo_metrics(ldr, hdr, ref=ldr)
    assert list(scores) == ['tmqi', 'tmqi_s', 'tmqi_n', 'psnr', 'ssim']
    assert scores['psnr'] == 100.0 and scores['ssim'] == pytest.approx(1.0, abs=1e-9)
    assert tm.ldr_psnr(ldr, np.clip(ldr + 0.1, 0, 1)) < 25


# ------------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope='module')
def tmo_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp('tmo')
    for i in range(2):
        hdr = _scene(10 + i)
        write_hdr(root / 'hdr' / f'scene{i}.exr', hdr)
        write_ldr(root / 'good' / f'scene{i}.png', _log_tonemap(hdr))
        write_ldr(root / 'clipped' / f'scene{i}.png', np.clip(hdr * 4.0, 0, 1))
        write_ldr(root / 'ref' / f'scene{i}.png', _log_tonemap(hdr))
    return root


def _eval(root, pred: str, tmp_path, *extra: str) -> dict:
    out = tmp_path / f'{pred}.json'
    code = evaluate.main(['--direction', 'hdr2ldr', '--pred', str(root / pred), '--gt', str(root / 'hdr'),
                          '--json', str(out), '--quiet', *extra])  # fmt: skip
    assert code == 0
    return json.loads(out.read_text())


def test_cli_hdr2ldr_ranks_operators_and_uses_the_reference(tmo_folders, tmp_path, capsys):
    good = _eval(tmo_folders, 'good', tmp_path, '--ref-ldr', str(tmo_folders / 'ref'), '--csv', str(tmp_path / 'g.csv'))
    clipped = _eval(tmo_folders, 'clipped', tmp_path, '--ref-ldr', str(tmo_folders / 'ref'))
    out = capsys.readouterr().out
    assert 'hdr2ldr' in out and 'Q = 0.8012 S^0.3046' in out  # protocol header
    assert set(good['summary']) == {'tmqi', 'tmqi_s', 'tmqi_n', 'psnr', 'ssim'}
    assert good['summary']['tmqi']['mean'] > clipped['summary']['tmqi']['mean']
    assert good['summary']['psnr']['mean'] > 45 > clipped['summary']['psnr']['mean']  # 8-bit round trip vs clipping
    assert (tmp_path / 'g.csv').read_text().splitlines()[0] == 'image,pred,gt,tmqi,tmqi_s,tmqi_n,psnr,ssim'
    # without a reference: TMQI only, the same values
    alone = _eval(tmo_folders, 'good', tmp_path)
    assert set(alone['summary']) == {'tmqi', 'tmqi_s', 'tmqi_n'}
    assert alone['summary']['tmqi']['mean'] == pytest.approx(good['summary']['tmqi']['mean'], rel=1e-12)


def test_cli_hdr2ldr_usage_errors(tmo_folders, capsys):
    base = ['--direction', 'hdr2ldr', '--pred', str(tmo_folders / 'good'), '--gt', str(tmo_folders / 'hdr'), '--quiet']
    assert evaluate.main([*base, '--metrics', 'psnr']) == 2
    assert '--ref-ldr' in capsys.readouterr().err
    assert evaluate.main([*base, '--metrics', 'pu21_psnr']) == 2
    assert 'unknown' in capsys.readouterr().err
    assert evaluate.main([*base, '--ldr', str(tmo_folders / 'ref')]) == 2
    assert evaluate.main(['--pred', str(tmo_folders / 'hdr'), '--gt', str(tmo_folders / 'hdr'),
                          '--ref-ldr', str(tmo_folders / 'ref')]) == 2  # fmt: skip
    assert 'hdr2ldr' in capsys.readouterr().err
