"""Tiled inference: tile layout, seamless blending, and tiles that agree through frozen global statistics (CPU)."""

import pytest
import torch
from torch import nn

from llmhdr_basicsr.archs.feedback_unet_arch import FeedbackUNet
from llmhdr_basicsr.utils.tiling import (
    GlobalStatsTiler,
    downscale_to_area,
    instance_norm_modules,
    make_tiles,
    tiled_forward,
)

TINY = dict(num_feat=4, lstm_feat=6, guidance_hidden=8, num_iter=2)


def trained_like(seed=0, **kw):
    """A tiny FeedbackUNet whose zero-initialised head and gates are re-drawn, so its output depends on every layer
    (an untrained one returns its input base exactly, whatever the statistics)."""
    torch.manual_seed(seed)
    net = FeedbackUNet(**{**TINY, **kw}).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith('head') or 'gate' in name or name.startswith('film'):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def scene(h=72, w=88, seed=0):
    """A non-stationary LDR image: bright textured left half, dark smooth right half, a clipped block."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(1, 3, h, w)
    x[..., : w // 2] = 0.6 + 0.3 * torch.rand(1, 3, h, w // 2, generator=g)
    ramp = torch.linspace(0.02, 0.2, w - w // 2).view(1, 1, 1, -1)
    x[..., w // 2 :] = ramp.expand(1, 3, h, -1)
    x[..., 5:20, 10:30] = 1.0
    return x


# ----------------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize('size', [(72, 88), (33, 129), (200, 57)])
def test_tiles_cover_aligned_and_partition_of_unity(size):
    h, w = size
    tiles = make_tiles(h, w, tile=32, overlap=8, multiple=8)
    acc = torch.zeros(h, w)
    for t in tiles:
        assert t.y0 % 8 == 0 and t.x0 % 8 == 0  # same pooling grid as the untiled image
        assert t.y1 - t.y0 <= 32 + 7 and t.x1 - t.x0 <= 32 + 7
        acc[t.y0 : t.y1, t.x0 : t.x1] += t.wy[:, None] * t.wx[None, :]
        assert (t.wy > 0).all() and (t.wx > 0).all()
    assert torch.allclose(acc, torch.ones(h, w), atol=1e-6)  # raised-cosine ramps sum to 1: no ripple
    ys = sorted({(t.y0, t.y1) for t in tiles})
    for (_, a1), (b0, _) in zip(ys, ys[1:]):
        assert a1 - b0 >= 8  # at least the requested overlap


def test_layout_errors_name_the_problem():
    with pytest.raises(ValueError, match='at most half the tile'):
        make_tiles(100, 100, tile=32, overlap=24)
    with pytest.raises(ValueError, match='at least 16'):
        make_tiles(100, 100, tile=8, overlap=0)


def test_tiled_forward_pointwise_is_exact_and_stays_on_cpu():
    x = torch.rand(2, 3, 50, 70)
    maps = torch.rand(2, 1, 50, 70)
    seen = []

    def fn(t, maps):
        seen.append(tuple(t.shape[-2:]))
        return torch.cat([t * 2 + 1, maps], dim=1)

    y = tiled_forward(fn, x, tile=24, overlap=8, extra={'maps': maps})
    assert y.device.type == 'cpu' and y.dtype == torch.float32
    assert len(seen) > 1 and all(hh <= 31 and ww <= 31 for hh, ww in seen)
    torch.testing.assert_close(y, torch.cat([x * 2 + 1, maps], dim=1), atol=1e-6, rtol=1e-6)


def test_downscale_keeps_range_and_budget():
    x = torch.rand(1, 3, 300, 500) * 7 + 1
    small = downscale_to_area(x, 128 * 128)
    assert small.shape[-2] * small.shape[-1] <= 128 * 128
    assert abs(small.shape[-1] / small.shape[-2] - 500 / 300) < 0.05
    assert small.min() >= x.min() and small.max() <= x.max()
    assert downscale_to_area(x, 300 * 500) is x


# -------------------------------------------------------------------------------------------- tiles that agree
def test_frozen_stats_match_untiled_and_per_tile_stats_do_not():
    """Image larger than one tile (72 x 88, 4 tiles of 48 with overlap 24), statistics of the full image
    (global_size <= 0): tiled == untiled within 1e-2 (max) / 1e-3 (mean abs) in the mu-law output (measured: 2.3e-3 /
    1.1e-4; what remains is the receptive field cut at tile borders). Per-tile statistics: >= 10x the mean error."""
    net = trained_like()
    x = scene()
    with torch.no_grad():
        ref = net(x)
    frozen = GlobalStatsTiler(net, tile=48, overlap=24, global_size=0)(x)
    per_tile = tiled_forward(net, x, tile=48, overlap=24)
    err_frozen = (frozen - ref).abs()
    err_tile = (per_tile - ref).abs()
    assert err_frozen.max() < 1e-2 and err_frozen.mean() < 1e-3, (err_frozen.max(), err_frozen.mean())
    assert err_tile.mean() > 10 * err_frozen.mean(), (err_tile.mean(), err_frozen.mean())


def test_downscaled_stats_beat_per_tile_stats_on_non_uniform_content():
    """The default (statistics from a copy of at most tile x tile pixels): closer to untiled than per-tile stats."""
    net = trained_like(seed=3)
    x = scene(96, 128, seed=1)
    with torch.no_grad():
        ref = net(x)
    frozen = GlobalStatsTiler(net, tile=32, overlap=8, global_size=64)(x)
    per_tile = tiled_forward(net, x, tile=32, overlap=8)
    assert (frozen - ref).abs().mean() < 0.5 * (per_tile - ref).abs().mean()


def test_image_within_one_tile_is_a_plain_call():
    net = trained_like()
    x = scene(30, 40)
    with torch.no_grad():
        ref = net(x)
    torch.testing.assert_close(GlobalStatsTiler(net, tile=48, overlap=8)(x), ref, atol=0, rtol=0)


def test_network_is_unchanged_after_tiling():
    net = trained_like()
    x = scene()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        before = net(x)
    GlobalStatsTiler(net, tile=32, overlap=8)(x)
    assert all('forward' not in m.__dict__ for m in instance_norm_modules(net).values())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=0, rtol=0)


def test_guidance_is_computed_once_globally():
    """A guidance callable runs in the global pass only (num_iter calls), and tiles replay its vectors: with
    full-image statistics the tiled output matches the untiled one although the callable depends on the output."""
    net = trained_like(guidance_dim=4)
    x = scene()
    calls = []

    def guidance(prev):
        calls.append(prev is None)
        v = torch.zeros(1, 4) if prev is None else prev.mean(dim=(2, 3)).repeat(1, 2)[:, :4] * 3
        return v.to(x.dtype)

    with torch.no_grad():
        ref = net(x, guidance=guidance)
    calls.clear()
    y = GlobalStatsTiler(net, tile=48, overlap=24, global_size=0)(x, guidance=guidance)
    assert calls == [True] + [False] * (TINY['num_iter'] - 1)
    assert (y - ref).abs().max() < 1e-2


def test_call_sequence_mismatch_is_an_error():
    class SizeDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.InstanceNorm2d(3)

        def forward(self, x):
            x = self.norm(x)
            return self.norm(x) if x.shape[-1] > 40 else x  # a second call only on large inputs

    with pytest.raises(RuntimeError, match='called'):
        GlobalStatsTiler(SizeDependent(), tile=32, overlap=8, global_size=0)(torch.rand(1, 3, 48, 64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_tiles_on_cuda_input_on_cpu():
    net = trained_like()
    x = scene()
    cpu = GlobalStatsTiler(net, tile=32, overlap=8, global_size=0)(x)
    gpu = GlobalStatsTiler(net.cuda(), tile=32, overlap=8, global_size=0, device='cuda')(x)
    assert gpu.device.type == 'cpu'
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)
