"""Known values, monotonicity, gradients and numpy twins of llmhdr_basicsr.utils.tonemap (CPU, float64 gradcheck)."""

import math

import cv2
import numpy as np
import pytest
import torch

from llmhdr_basicsr.utils import tonemap as tm


def _rand(*shape, low=0.0, high=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(*shape, generator=g, dtype=dtype)


def _hdr(n=2, h=8, w=8, seed=0):
    """Linear HDR batch (N, 3, H, W), log-uniform over ~4 decades."""
    return torch.exp(_rand(n, 3, h, w, low=math.log(1e-3), high=math.log(20.0), seed=seed))


# ------------------------------------------------------------------------------------------------ known values
def test_mu_law_known_values_and_inverse():
    assert float(tm.mu_law(torch.tensor(0.0))) == 0.0
    assert float(tm.mu_law(torch.tensor(1.0))) == pytest.approx(1.0, abs=1e-12)
    # log(1 + 5000 * 0.1) / log(5001), computed by hand
    assert float(tm.mu_law(torch.tensor(0.1, dtype=torch.float64))) == pytest.approx(math.log(501) / math.log(5001))
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(tm.mu_law_inverse(tm.mu_law(x)), x, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(tm.mu_law(tm.mu_law_inverse(x)), x, atol=1e-12, rtol=1e-10)


def test_pu21_known_values():
    values = tm.pu21_encode(torch.tensor([100.0, 10000.0], dtype=torch.float64))
    assert float(values[0]) == pytest.approx(256.4, abs=0.1)
    assert float(values[1]) == pytest.approx(595.4, abs=0.1)
    assert tm.PU21_PEAK == pytest.approx(595.4, abs=0.1)
    clamped = tm.pu21_encode(torch.tensor([1e-6, 0.005, 1e4, 1e6], dtype=torch.float64))
    assert float(clamped[0]) == float(clamped[1]) and float(clamped[2]) == float(clamped[3])  # range [0.005, 1e4]


def test_pu21_matches_pycvvdp_reference():
    from pycvvdp.utils import PU

    lum = torch.logspace(-4, 4.5, 200, dtype=torch.float64)  # also outside [0.005, 10000]: both clamp
    torch.testing.assert_close(tm.pu21_encode(lum), PU().encode(lum), rtol=1e-10, atol=1e-9)


def test_srgb_known_values_and_round_trip():
    assert float(tm.srgb_encode(torch.tensor(0.18, dtype=torch.float64))) == pytest.approx(0.4613, abs=1e-4)
    assert float(tm.srgb_encode(torch.tensor(0.002, dtype=torch.float64))) == pytest.approx(0.02584)  # linear toe
    assert float(tm.srgb_decode(torch.tensor(0.5, dtype=torch.float64))) == pytest.approx(0.21404, abs=1e-5)
    v = torch.linspace(0, 1, 257, dtype=torch.float64)
    torch.testing.assert_close(tm.srgb_encode(tm.srgb_decode(v)), v, atol=1e-12, rtol=0)
    torch.testing.assert_close(tm.srgb_decode(tm.srgb_encode(v)), v, atol=1e-12, rtol=0)
    assert float(tm.srgb_encode(torch.tensor(3.0))) == pytest.approx(1.0, abs=1e-7)  # clamped input
    assert float(tm.srgb_encode(torch.tensor(-1.0))) == 0.0


def test_luminance_weights():
    rgb = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)  # pure R, G, B images
    torch.testing.assert_close(tm.luminance(rgb).flatten(), torch.tensor(tm.REC709_WEIGHTS, dtype=torch.float64))
    assert float(tm.luminance(torch.ones(3, 2, 2, dtype=torch.float64)).mean()) == pytest.approx(1.0)


def test_exposure_gamma_scales_clips_and_applies_gamma():
    x = torch.tensor([0.0, 0.1, 0.25, 0.5, 2.0], dtype=torch.float64)
    out = tm.exposure_gamma(x, stops=1.0, gamma=2.2)
    expected = torch.tensor([1e-6, 0.2, 0.5, 1.0, 1.0], dtype=torch.float64) ** (1 / 2.2)  # 0 -> eps^(1/gamma)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(tm.exposure_gamma(x, stops=-1.0, gamma=None), (x / 2).clamp(0, 1))


def test_reinhard_of_a_constant_image():
    const = torch.full((1, 3, 4, 4), 7.0, dtype=torch.float64)
    # Lwhite = the image's maximum scaled luminance: a constant image maps to white exactly
    torch.testing.assert_close(tm.reinhard2002(const, gamma=None), torch.ones_like(const), atol=1e-5, rtol=0)
    # without burn-out (huge Lwhite): L = key, Ld = key / (1 + key), then the display gamma
    out = tm.reinhard2002(const, key=0.18, white=1e6, gamma=2.2)
    torch.testing.assert_close(out, torch.full_like(const, (0.18 / 1.18) ** (1 / 2.2)), atol=1e-5, rtol=0)
    # scale invariance of the global operator (up to its eps = 1e-6 guard on the darkest pixels)
    x = _hdr()
    torch.testing.assert_close(tm.reinhard2002(x * 50), tm.reinhard2002(x), atol=1e-4, rtol=0)
    assert not torch.allclose(tm.reinhard2002(x, key=0.36), tm.reinhard2002(x), atol=1e-2)


def test_normalize_hdr_maps_percentile_to_one():
    x = _hdr(n=3, h=10, w=10)
    out, scale = tm.normalize_hdr(x)
    assert scale.shape == (3, 1, 1, 1)
    torch.testing.assert_close(tm.luminance(out).amax(dim=(1, 2, 3)), torch.ones(3, dtype=torch.float64))
    out, scale = tm.normalize_hdr(x, percentile=90.0)
    q = torch.quantile(tm.luminance(out).flatten(1), 0.9, dim=1)
    torch.testing.assert_close(q, torch.ones(3, dtype=torch.float64))
    assert (tm.luminance(out) > 1).any()  # values above the percentile are kept, not clipped


# ------------------------------------------------------------------------------------------------ monotonicity
@pytest.mark.parametrize(
    'fn, low, high',
    [
        (tm.mu_law, 0.0, 1.0),
        (tm.mu_law_inverse, 0.0, 1.0),
        (tm.srgb_encode, 0.0, 1.0),
        (tm.srgb_decode, 0.0, 1.0),
        (lambda x: tm.exposure_gamma(x, stops=0.5), 0.0, 0.7),
        (tm.pu21_encode, 0.005, 10000.0),
    ],
)
def test_transfer_functions_are_strictly_increasing(fn, low, high):
    x = torch.linspace(low, high, 2001, dtype=torch.float64)
    assert (torch.diff(fn(x)) > 0).all()


def test_reinhard_is_monotonic_in_luminance():
    grey = torch.logspace(-3, 2, 64, dtype=torch.float64).view(1, 1, 8, 8).repeat(1, 3, 1, 1)
    out = tm.reinhard2002(grey, gamma=2.2)[0, 0].flatten()
    assert (torch.diff(out) > 0).all() and float(out.max()) <= 1.0


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize(
    'name, fn, low, high',
    [
        ('mu_law', tm.mu_law, 0.01, 1.0),
        ('mu_law_inverse', tm.mu_law_inverse, 0.01, 1.0),
        ('exposure_gamma', lambda x: tm.exposure_gamma(x, stops=-0.5, gamma=2.2), 0.05, 1.3),  # 2^-0.5 x < 1
        ('srgb_encode', tm.srgb_encode, 0.01, 0.99),
        ('srgb_decode', tm.srgb_decode, 0.05, 0.99),
        ('pu21_encode', tm.pu21_encode, 0.01, 9000.0),
    ],
)
def test_gradcheck_elementwise(name, fn, low, high):
    x = _rand(12, low=low, high=high, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, rtol=1e-4), name


def test_gradcheck_srgb_linear_toe():
    x = _rand(6, low=0.0005, high=0.003, seed=4).requires_grad_(True)  # below the 0.0031308 kink
    assert torch.autograd.gradcheck(tm.srgb_encode, (x,), eps=1e-8, atol=1e-6)


def test_gradcheck_reinhard():
    x = _hdr(n=1, h=3, w=3, seed=5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: tm.reinhard2002(t, gamma=2.2), (x,), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradcheck(lambda t: tm.reinhard2002(t, white=3.0), (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ numpy twins
@pytest.mark.parametrize(
    'torch_fn, np_fn, kwargs',
    [
        (tm.mu_law, tm.mu_law_np, {}),
        (tm.mu_law_inverse, tm.mu_law_inverse_np, {}),
        (tm.srgb_encode, tm.srgb_encode_np, {}),
        (tm.srgb_decode, tm.srgb_decode_np, {}),
        (tm.exposure_gamma, tm.exposure_gamma_np, {'stops': 1.5, 'gamma': 2.4}),
        (tm.pu21_encode, tm.pu21_encode_np, {}),
        (tm.reinhard2002, tm.reinhard2002_np, {'key': 0.25}),
        (tm.luminance, tm.luminance_np, {}),
    ],
)
def test_numpy_twin_equals_torch(torch_fn, np_fn, kwargs):
    x = _hdr(n=1, h=5, w=6, seed=6)[0] * (1000 if torch_fn is tm.pu21_encode else 0.05)  # (3, H, W)
    hwc = x.permute(1, 2, 0).numpy().astype(np.float32)
    out = np_fn(hwc, **kwargs)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    ref = torch_fn(torch.from_numpy(hwc.astype(np.float64)).permute(2, 0, 1), **kwargs).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_numpy_twin_keeps_scalar_shape():
    out = tm.pu21_encode_np(np.array(100.0))
    assert out.shape == () and float(out) == pytest.approx(256.4, abs=0.1)
    assert tm.mu_law_np(np.float32(1.0)).shape == ()
    assert tm.mu_law_np(np.array([0, 1])).dtype == np.float32  # integer input -> float32


def test_hist_equalize_matches_opencv_on_ycrcb_luma():
    rng = np.random.default_rng(7)
    rgb = np.clip(rng.normal(0.3, 0.1, (16, 20, 3)), 0, 1)  # low-contrast image
    u8 = np.round(rgb * 255).astype(np.uint8)
    # independent path through OpenCV's BGR convention
    ycrcb = cv2.cvtColor(np.ascontiguousarray(u8[..., ::-1]), cv2.COLOR_BGR2YCrCb)
    ycrcb[..., 0] = cv2.equalizeHist(np.ascontiguousarray(ycrcb[..., 0]))
    expected = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)[..., ::-1]
    np.testing.assert_array_equal(tm.hist_equalize_np(u8), expected)
    out_f = tm.hist_equalize_np(rgb.astype(np.float32))
    assert out_f.dtype == np.float32
    np.testing.assert_allclose(out_f, expected / 255.0, atol=1e-7)
    batch = torch.from_numpy(rgb).permute(2, 0, 1)[None].repeat(2, 1, 1, 1).float()
    out_t = tm.hist_equalize(batch)
    assert out_t.shape == batch.shape and out_t.dtype == batch.dtype
    torch.testing.assert_close(out_t[1].permute(1, 2, 0), torch.from_numpy(expected / 255.0).float())
    assert tm.hist_equalize(batch[0]).shape == batch[0].shape


@pytest.mark.parametrize('method', tm.PREVIEW_OPERATORS)
@pytest.mark.parametrize('stops', [-2.0, 0.0, 3.0])
def test_tonemap_preview_range(method, stops):
    x = _hdr(n=2, h=6, w=7, seed=8) * 100
    out = tm.tonemap_preview(x, method=method, stops=stops)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out.max()) - float(out.min()) > 0.1  # not a flat image


def test_tonemap_preview_brighter_with_more_stops_and_rejects_unknown_method():
    x = _hdr(n=1, h=6, w=7, seed=9)
    for method in tm.PREVIEW_OPERATORS:
        assert float(tm.tonemap_preview(x, method, stops=1).mean()) > float(tm.tonemap_preview(x, method).mean())
    with pytest.raises(ValueError, match='drago'):
        tm.tonemap_preview(x, method='drago')
