"""Classical iTMO baselines (llmhdr_basicsr/archs/itmo_baseline_arch.py): hand-computed values on 2x2 images."""

import math

import numpy as np
import pytest
import torch
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY

from llmhdr_basicsr.archs.itmo_baseline_arch import (
    AkyuzITMO,
    KovaleskiOliveiraITMO,
    LinearizeITMO,
    MasiaITMO,
    batch_quantile,
    cross_bilateral_grid,
)

NAMES = ('LinearizeITMO', 'AkyuzITMO', 'MasiaITMO', 'KovaleskiOliveiraITMO')
MU = 5000.0


def grey(values, dtype=torch.float64):
    """(1, 3, 2, 2) grey image from 4 values in raster order."""
    v = torch.tensor(values, dtype=dtype).view(1, 1, 2, 2)
    return v.expand(1, 3, 2, 2).clone()


def srgb_to_linear(v):
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def mu(v):
    return math.log1p(MU * v) / math.log1p(MU)


def test_registered_parameter_free_and_buildable():
    for name in NAMES:
        assert name in ARCH_REGISTRY
        net = build_network({'type': name, 'out_domain': 'linear'})
        assert type(net).__name__ == name
        assert sum(p.numel() for p in net.parameters()) == 0
        assert net.out_domain == 'linear'


def test_linearize_hand_values():
    x = grey([0.0, 0.5, 0.02, 1.0])
    out = LinearizeITMO(out_domain='linear')(x)[0, 0].flatten().tolist()
    expected = [0.0, srgb_to_linear(0.5), 0.02 / 12.92, 1.0]
    assert out == pytest.approx(expected, abs=1e-9)
    assert expected[1] == pytest.approx(0.214041, abs=1e-6)  # the textbook value of sRGB 0.5
    out = LinearizeITMO(transfer='gamma', gamma=2.2, peak_ratio=4.0, out_domain='linear')(x)[0, 1].flatten().tolist()
    assert out == pytest.approx([0.0, 0.5**2.2 / 4, 0.02**2.2 / 4, 0.25], abs=1e-9)
    out = LinearizeITMO()(x)[0, 2].flatten().tolist()  # hdr_mu default
    assert out == pytest.approx([mu(v) for v in expected], abs=1e-9)


def test_akyuz_hand_values_and_colour():
    # gamma-2 linearisation: display (0.2, 0.4, 0.6, 1.0) -> linear (0.04, 0.16, 0.36, 1.0); min 0.04, max 1
    x = grey([0.2, 0.4, 0.6, 1.0])
    net = AkyuzITMO(k=0.5, expand_gamma=2.0, transfer='gamma', gamma=2.0, out_domain='linear')
    out = net(x)[0, 0].flatten().tolist()
    norm = [(v - 0.04) / 0.96 for v in (0.04, 0.16, 0.36, 1.0)]  # 0, 0.125, 0.3333, 1
    assert out == pytest.approx([0.5 * n**2 for n in norm], abs=1e-9)
    assert out[1] == pytest.approx(0.0078125, abs=1e-9)
    # a coloured pixel keeps its linear RGB ratios (luminance-only scaling)
    x = grey([0.2, 0.4, 0.6, 1.0])
    x[0, :, 0, 1] = torch.tensor([0.8, 0.4, 0.2], dtype=torch.float64)
    out = AkyuzITMO(transfer='gamma', gamma=2.0, out_domain='linear')(x)[0, :, 0, 1]
    lin = torch.tensor([0.64, 0.16, 0.04], dtype=torch.float64)
    assert (out / out[1]).tolist() == pytest.approx((lin / lin[1]).tolist(), rel=1e-9)


def _masia_expected_key(lums):
    lav = math.exp(sum(math.log(v + 1e-6) for v in lums) / len(lums))
    lmin, lmax = min(v for v in lums if v > 0), max(lums)
    return (math.log(lav) - math.log(lmin)) / (math.log(lmax) - math.log(lmin)), lav


def test_masia_2009_and_2017_hand_values():
    x = grey([0.1, 1.0, 1.0, 1.0])  # gamma 2: linear (0.01, 1, 1, 1)
    lums = [0.01, 1.0, 1.0, 1.0]
    key, lav = _masia_expected_key(lums)
    assert key == pytest.approx(0.75, abs=1e-4)  # log-mean is a quarter of the way down from log 1 to log 0.01
    g2009 = 10.44 * key - 6.282  # ~1.548
    net = MasiaITMO(robust=0.0, transfer='gamma', gamma=2.0, out_domain='linear')
    assert float(net.expansion_gamma(torch.tensor(lums, dtype=torch.float64).view(1, 1, 2, 2))) == pytest.approx(g2009)
    assert net(x)[0, 1].flatten().tolist() == pytest.approx([0.01**g2009, 1.0, 1.0, 1.0], abs=1e-12)
    assert 0.01**g2009 == pytest.approx(0.000802, abs=1e-6)
    # Masia 2017 Eq. 5: 3 of 4 pixels over-exposed -> p_ov = 75 %
    g2017 = 2.4379 + 0.2319 * math.log(lav) - 1.1228 * key + 0.0085 * 75.0
    assert g2017 == pytest.approx(1.9663, abs=1e-3)
    net = MasiaITMO(variant='2017', robust=0.0, transfer='gamma', gamma=2.0, out_domain='linear')
    assert net(x)[0, 2].flatten().tolist() == pytest.approx([0.01**g2017, 1.0, 1.0, 1.0], abs=1e-12)


def test_masia_negative_gamma_is_clamped():
    lums = [0.04, 0.16, 0.36, 1.0]  # low key: 10.44 k - 6.282 < 0
    key, _ = _masia_expected_key(lums)
    assert 10.44 * key - 6.282 < 0
    net = MasiaITMO(robust=0.0, gamma_min=0.25, transfer='gamma', gamma=2.0, out_domain='linear')
    out = net(grey([0.2, 0.4, 0.6, 1.0]))[0, 0].flatten().tolist()
    assert out == pytest.approx([v**0.25 for v in lums], abs=1e-9)


def test_batch_quantile_matches_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 7, 5, generator=g, dtype=torch.float64)
    for q in (0.0, 0.01, 0.5, 0.99, 1.0):
        expected = np.quantile(x.flatten(1).numpy(), q, axis=1)
        assert batch_quantile(x, q).numpy() == pytest.approx(expected, abs=1e-12)
    valid = x > 0.3
    got = batch_quantile(x, 0.2, valid)
    for i in range(3):
        assert float(got[i]) == pytest.approx(np.quantile(x[i][valid[i]].numpy(), 0.2), abs=1e-12)


def test_kovaleski_edge_stopping_hand_values():
    # two saturated white pixels, two grey (0.2) pixels: range levels 10 and 2 are 8 sigma_r apart -> no mixing,
    # BEF = 1 on white (boost 4 -> peak 1) and 0 on grey (no boost, / 4)
    x = grey([1.0, 0.2, 0.2, 1.0])
    b = 0.3 / 1200
    net = KovaleskiOliveiraITMO(sigma_s=100.0, sigma_r=0.1, out_domain='linear')
    bef = net.brightness_enhancement(x)[0, 0].flatten().tolist()
    assert bef == pytest.approx([1.0, 0.0, 0.0, 1.0], abs=1e-9)
    lin = srgb_to_linear(0.2)
    expected_grey = (lin * (1 - b) + b) / 4  # luminance of a grey pixel = its value
    out = net(x)[0, 0].flatten().tolist()
    assert out == pytest.approx([1.0, expected_grey, expected_grey, 1.0], abs=1e-9)


def test_kovaleski_uniform_guide_gives_mask_mean():
    # equal display luminance 0.5 everywhere, one pixel clipped in red: the cross-bilateral filter sees one range
    # level and one spatial cell, so BEF = mean(mask) = 1/4 and the boost is 1 + 3/4
    c = (0.5 - 0.2126) / (1 - 0.2126)
    x = grey([0.5, 0.5, 0.5, 0.5])
    x[0, :, 1, 0] = torch.tensor([1.0, c, c], dtype=torch.float64)
    b = 0.3 / 1200
    net = KovaleskiOliveiraITMO(sigma_s=100.0, sigma_r=0.1, out_domain='linear')
    assert net.brightness_enhancement(x).flatten().tolist() == pytest.approx([0.25] * 4, abs=1e-9)
    lin = [srgb_to_linear(v) for v in (1.0, c, c)]
    lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    scale = (lum * (1 - b) + b) * 1.75 / 4 / lum
    out = net(x)[0, :, 1, 0].tolist()
    assert out == pytest.approx([v * scale for v in lin], abs=1e-9)
    g = srgb_to_linear(0.5)
    assert float(net(x)[0, 1, 0, 0]) == pytest.approx((g * (1 - b) + b) * 1.75 / 4, abs=1e-9)


def test_kovaleski_bef_falls_off_and_stops_at_edges():
    # left half dark (0.2), right half light grey (0.8), saturated 6x6 spot (columns 26-31) in the right half
    x = torch.full((1, 3, 48, 48), 0.8, dtype=torch.float64)
    x[..., :24] = 0.2
    x[..., 20:26, 26:32] = 1.0
    net = KovaleskiOliveiraITMO(sigma_s=6.0)
    row = net.brightness_enhancement(x)[0, 0, 23]
    assert float(row[28]) > 0.3
    right = row[31:].tolist()
    assert all(a >= b - 1e-9 for a, b in zip(right, right[1:]))  # decays with distance on the same surface
    assert float(row[34]) > 0.01
    assert float(row[23]) < 1e-3  # 3 px left of the spot, across the dark/light edge: stopped
    # without an edge-stopping range weight (large sigma_r) the boost does cross the edge
    mask = (x.amax(1, keepdim=True) > 254 / 255).double()
    assert float(cross_bilateral_grid(mask, x[:, :1], 6.0, 2.0)[0, 0, 23, 23]) > 0.02


def test_kovaleski_without_clipping_is_a_linear_expansion():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 9, 11, generator=g, dtype=torch.float64) * 0.9
    out = KovaleskiOliveiraITMO(out_domain='linear')(x)
    lin = x.clone().apply_(srgb_to_linear)
    lum = (lin * torch.tensor([0.2126, 0.7152, 0.0722], dtype=torch.float64).view(1, 3, 1, 1)).sum(1, keepdim=True)
    b = 0.3 / 1200
    assert torch.allclose(out, lin * (lum * (1 - b) + b) / lum / 4, atol=1e-12)


@pytest.mark.parametrize('name', NAMES)
def test_domains_batching_and_determinism(name):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 12, 10, generator=g)
    x[:, :, 3:6, 4:7] = 1.0
    cls = ARCH_REGISTRY.get(name)
    lin = cls(out_domain='linear')(x)
    out = cls()(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    mu_ref = (torch.log1p(MU * lin.clamp(min=0)) / math.log1p(MU)).clamp(0, 1)
    assert torch.allclose(out, mu_ref, atol=1e-6)
    assert torch.equal(cls()(x), out)  # deterministic
    single = torch.cat([cls()(x[i : i + 1]) for i in range(2)])
    assert torch.allclose(single, out, atol=1e-6)  # per-image statistics, no cross-talk in a batch
    assert float(out[:, :, 3:6, 4:7].mean()) > float(out.mean())  # white stays the brightest region


def test_bad_options_and_inputs_are_named():
    with pytest.raises(ValueError, match='AkyuzITMO.*out_domain'):
        AkyuzITMO(out_domain='log')
    with pytest.raises(ValueError, match='MasiaITMO.*variant'):
        MasiaITMO(variant='2011')
    with pytest.raises(ValueError, match='LinearizeITMO.*transfer'):
        LinearizeITMO(transfer='pq')
    with pytest.raises(ValueError, match=r'KovaleskiOliveiraITMO.*\(N, 3, H, W\)'):
        KovaleskiOliveiraITMO()(torch.zeros(3, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('name', NAMES)
def test_cuda_matches_cpu(name):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 16, 16, generator=g)
    x[:, :, 4:8, 4:8] = 1.0
    net = ARCH_REGISTRY.get(name)()
    assert torch.allclose(net.cuda()(x.cuda()).cpu(), net(x), atol=1e-5)
