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


def test_learned_camera_curve_is_image_wide_in_tiles():
    """crf_basis: the per-image curve weights come from the whole image's bottleneck mean (ImageMean, recorded and
    replayed like instance norm), so with full-image statistics the tiles use the untiled curve."""
    net = trained_like(seed=2, crf_basis=True)
    with torch.no_grad():  # a curve that really depends on the image
        net.crf.bias.fill_(0.5)
        net.crf.proj.weight.normal_(0, 2.0)
    x = scene()
    with torch.no_grad():
        ref = net(x)
    frozen = GlobalStatsTiler(net, tile=48, overlap=24, global_size=0)(x)
    err = (frozen - ref).abs()
    assert err.max() < 1e-2 and err.mean() < 1e-3, (err.max(), err.mean())
    assert 'crf.pool' in instance_norm_modules(net)


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
    # the estimate re-enters the decoder at every iteration, which widens the receptive field beyond the overlap
    assert (y - ref).abs().max() < 2e-2


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


# ---------------------------------------------------------------------- BasicSR's test path (val.tile, issue 6)
def _test_setup(root):
    """Two tiny generators with re-drawn heads/gates (see trained_like) saved as BasicSR checkpoints, and 72 x 88
    LDR/HDR test folders."""
    from conftest import make_unpaired_folders

    ldr, hdr = make_unpaired_folders(root / 'data', n_ldr=2, n_hdr=2, size=(72, 88))
    networks = {}
    for key, domain in (('network_g', 'hdr_mu'), ('network_g_hdr2ldr', 'ldr')):
        networks[key] = {'type': 'FeedbackUNet', **TINY, 'out_domain': domain, 'headroom': 4}
        net = trained_like(**{k: v for k, v in networks[key].items() if k not in ('type', *TINY)})
        torch.save({'params': net.state_dict()}, root / f'{key}.pth')
    return ldr, hdr, networks


def _run_test_pipeline(root, monkeypatch, name, ldr, hdr, networks, tile=None, num_gpu=0):
    """``python -m basicsr.test -opt <name>.yml`` in-process: LDR->HDR on ``ldr``, HDR->LDR on ``hdr``."""
    import yaml
    from basicsr.test import test_pipeline

    from conftest import REPO

    opt = yaml.safe_load((REPO / 'options' / 'test_llmhdr_tonemap.yml').read_text())
    opt.update(name=name, num_gpu=num_gpu, **networks)
    opt['datasets'] = {
        'test_1': {'name': 'ldr', 'type': 'SingleLDRDataset', 'dataroot_lq': str(ldr)},
        'test_2': {'name': 'hdr', 'type': 'SingleHDRDataset', 'dataroot_hdr': str(hdr)},
    }
    opt['path'] = {f'pretrain_{k}': str(root / f'{k}.pth') for k in networks}
    if tile is not None:
        opt['val']['tile'] = tile
    (root / f'{name}.yml').write_text(yaml.safe_dump(opt))
    monkeypatch.setattr('sys.argv', ['test.py', '-opt', str(root / f'{name}.yml')])
    test_pipeline(str(root))
    return root / 'results' / name / 'visualization'


def test_basicsr_test_path_tiled_matches_untiled_both_directions(tmp_path, monkeypatch):
    """val.tile in BasicSR's test.py: 72 x 88 images in 2 x 2 tiles of 64 (overlap 32), statistics of the full image
    (global_size 0), both generators. Tolerance as for GlobalStatsTiler (test above, README): max 1e-2, mean 1e-3 in
    the generators' [0, 1] output space (T-space for LDR->HDR; the 8-bit PNGs of HDR->LDR get one extra code value).
    Measured: LDR->HDR max 3.9e-3 / mean 1.3e-4, HDR->LDR max 1/255 / mean 1.4e-4."""
    import logging

    import numpy as np

    from llmhdr_basicsr.utils.hdr_io import read_hdr, read_ldr
    from llmhdr_basicsr.utils.tonemap import hdr_to_model

    ldr, hdr, networks = _test_setup(tmp_path)
    untiled = _run_test_pipeline(tmp_path, monkeypatch, 'untiled', ldr, hdr, networks)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    basicsr_logger = logging.getLogger('basicsr')
    basicsr_logger.addHandler(handler)  # BasicSR's logger does not propagate to pytest's caplog
    level, disabled = basicsr_logger.level, logging.root.manager.disable
    basicsr_logger.setLevel(logging.INFO)  # earlier tests in this process may have left it quieter
    logging.disable(logging.NOTSET)
    try:
        tile = {'size': 64, 'overlap': 32, 'global_size': 0}
        tiled = _run_test_pipeline(tmp_path, monkeypatch, 'tiled', ldr, hdr, networks, tile)
    finally:
        basicsr_logger.removeHandler(handler)
        basicsr_logger.setLevel(level)
        logging.disable(disabled)
    log = '\n'.join(messages)
    assert 'ldr: tiled inference (val.tile): tile 64 px, overlap 32 px' in log
    assert 'hdr: tiled inference (val.tile)' in log
    assert 'Unknown option' not in log
    assert len(make_tiles(72, 88, 64, 32)) == 4

    exrs = sorted((untiled / 'ldr').glob('*.exr'))
    pngs = sorted((untiled / 'hdr').glob('*.png'))
    assert len(exrs) == 2 and len(pngs) == 2
    for ref_path in exrs:  # LDR->HDR, compared in T-space (the generator's output space)
        ref = hdr_to_model(torch.from_numpy(read_hdr(ref_path)), 4.0)
        out = hdr_to_model(torch.from_numpy(read_hdr(tiled / 'ldr' / ref_path.name.replace('untiled', 'tiled'))), 4.0)
        err = (out - ref).abs()
        assert ref.std() > 0.01  # the network's output is not flat
        assert 0 < err.max() < 1e-2 and err.mean() < 1e-3, (ref_path.name, err.max(), err.mean())
    for ref_path in pngs:  # HDR->LDR
        ref = read_ldr(ref_path)
        err = np.abs(read_ldr(tiled / 'hdr' / ref_path.name.replace('untiled', 'tiled')) - ref)
        assert err.max() < 1e-2 + 1 / 255 and err.mean() < 1e-3, (ref_path.name, err.max(), err.mean())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_basicsr_test_path_tiled_on_cuda_matches_untiled_on_cpu(tmp_path, monkeypatch):
    """The same tolerance as on the CPU: tiles on the GPU, the blended image assembled on the CPU."""
    from llmhdr_basicsr.utils.hdr_io import read_hdr
    from llmhdr_basicsr.utils.tonemap import hdr_to_model

    ldr, hdr, networks = _test_setup(tmp_path)
    untiled = _run_test_pipeline(tmp_path, monkeypatch, 'untiled', ldr, hdr, networks)
    tile = {'size': 64, 'overlap': 32, 'global_size': 0}
    tiled = _run_test_pipeline(tmp_path, monkeypatch, 'tiled', ldr, hdr, networks, tile, num_gpu=1)
    exrs = sorted((untiled / 'ldr').glob('*.exr'))
    assert len(exrs) == 2
    for ref_path in exrs:
        ref = hdr_to_model(torch.from_numpy(read_hdr(ref_path)), 4.0)
        out = hdr_to_model(torch.from_numpy(read_hdr(tiled / 'ldr' / ref_path.name.replace('untiled', 'tiled'))), 4.0)
        err = (out - ref).abs()
        assert err.max() < 1e-2 and err.mean() < 1e-3, (ref_path.name, err.max(), err.mean())


@pytest.mark.parametrize(
    ('tile', 'error', 'message'),
    [
        (-8, ValueError, r'val\.tile must be > 0'),
        ({'size': 64, 'overlap': 40}, ValueError, r'val\.tile\.overlap \(40\) is too large'),
        ({'size': 64, 'overlap': 64}, ValueError, r'val\.tile\.overlap \(64\) is too large'),
        ({'size': 8}, ValueError, r'val\.tile\.size = 8 is too small'),
        ({'size': 64, 'overlp': 8}, KeyError, r"val\.tile: 'overlp' \(did you mean 'overlap'\?\)"),
        ('512', TypeError, r'val\.tile must be an integer'),
    ],
)
def test_bad_val_tile_is_a_clear_error_naming_the_option(tmp_path, monkeypatch, tile, error, message):
    ldr, hdr, networks = _test_setup(tmp_path)
    with pytest.raises(error, match=message):
        _run_test_pipeline(tmp_path, monkeypatch, 'bad', ldr, hdr, networks, tile)


@pytest.mark.parametrize(
    ('value', 'expected'),
    [
        (None, None),
        (0, None),
        (False, None),
        ({'size': 0}, None),
        (512, (512, 32, None)),
        ({'size': 256, 'overlap': 16}, (256, 16, None)),
        ({'size': 256, 'overlap': 16, 'global_size': 0}, (256, 16, 0)),
    ],
)
def test_val_tile_forms(value, expected):
    from llmhdr_basicsr.utils.tile_option import parse_tile_option

    assert parse_tile_option(value) == expected


def test_val_tile_auto_is_the_default_and_tiles_only_large_images(tmp_path):
    """``val.tile: auto`` (also the default) = the llmhdr-infer tile settings, applied to images above 2 MP only;
    ``val.tile: null`` forces whole images."""
    from basicsr.models import build_model

    from conftest import REPO
    from llmhdr_basicsr.utils.tile_option import AUTO_TILE_PIXELS, parse_tile_option, tile_min_pixels

    assert parse_tile_option('auto') == (512, 32, None) and tile_min_pixels('auto') == AUTO_TILE_PIXELS == 2_000_000
    assert tile_min_pixels(512) == 0 and tile_min_pixels(None) == 0
    import yaml

    ldr, hdr, networks = _test_setup(tmp_path)
    opt = yaml.safe_load((REPO / 'options' / 'test_llmhdr_tonemap.yml').read_text())
    opt.update(networks, is_train=False, dist=False, rank=0, world_size=1, num_gpu=0)
    opt['path'] = {f'pretrain_{k}': str(tmp_path / f'{k}.pth') for k in networks}
    models = {}
    for tile in ('default', 'auto', None):
        val = dict(opt['val'])
        val.pop('tile', None)
        if tile != 'default':
            val['tile'] = tile
        models[tile] = build_model({**opt, 'val': val})
    assert models['default'].val_tile_min_pixels == models['auto'].val_tile_min_pixels == AUTO_TILE_PIXELS
    assert models[None].val_tile is None
    x = torch.rand(1, 3, 72, 88)
    with torch.no_grad():
        whole = models[None].infer(models[None].net_g, x)
        model = models['auto']
        assert torch.equal(model.infer(model.net_g, x), whole)  # 6336 px <= 2 MP: untiled
        model.val_tile = parse_tile_option({'size': 64, 'overlap': 32, 'global_size': 0})
        model.val_tile_min_pixels = 72 * 88 - 1
        tiled = model.infer(model.net_g, x)  # one pixel above the threshold: tiled
    assert not torch.equal(tiled, whole) and (tiled - whole).abs().mean() < 1e-2
