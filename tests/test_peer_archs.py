"""The peer single-image HDR networks (ExpandNet, HDRCNN, FHDR, SingleHDRUNet): registration, sizes, domains, exact
parameter counts, the paper-specific properties and one supervised PairedHDRModel step each (tiny widths, CPU)."""

from __future__ import annotations

import importlib

import pytest
import torch

import llmhdr_basicsr.plugin  # noqa: F401  (registers the architectures)
from llmhdr_basicsr.archs.arch_util import pad_to_multiple, reflect_pad
from llmhdr_basicsr.archs.hdrcnn_arch import EPS, TORCHVISION_CONV_INDICES, highlight_mask
from llmhdr_basicsr.archs.itmo_baseline_arch import linearize
from llmhdr_basicsr.archs.singlehdr_arch import well_exposed_mask
from llmhdr_basicsr.models.hdr_base_model import unwrap_output

#: Tiny configurations (seconds on one CPU thread).
TINY = {
    'ExpandNet': {'num_feat': 4, 'global_size': 16},
    'HDRCNN': {'width': 4},
    'FHDR': {'num_feat': 4, 'num_iter': 2},
    'SingleHDRUNet': {'num_feat': 4},
}
#: Parameters of the paper-default configurations, as the module docstrings state them.
PAPER_DEFAULT_PARAMS = {'ExpandNet': 456_899, 'HDRCNN': 29_443_358, 'FHDR': 571_267, 'SingleHDRUNet': 6_916_131}
MODULES = {
    'ExpandNet': 'expandnet_arch',
    'HDRCNN': 'hdrcnn_arch',
    'FHDR': 'fhdr_arch',
    'SingleHDRUNet': 'singlehdr_arch',
}


def build(name: str, **kw) -> torch.nn.Module:
    from basicsr.archs import build_network

    torch.manual_seed(0)
    return build_network({'type': name, **TINY[name], **kw})


def ldr(n: int = 2, h: int = 37, w: int = 53, seed: int = 0) -> torch.Tensor:
    """Display-referred LDR with mid-tones, a clipped highlight and crushed shadows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g) * 0.8 + 0.1
    x[..., : h // 3, : w // 3] = 1.0
    x[..., -(h // 4) :, -(w // 4) :] = 0.01
    return x


# ---------------------------------------------------------------------------------------------------- registration
def test_registered_without_colliding_with_basicsr():
    from basicsr.utils.registry import ARCH_REGISTRY

    for name, module in MODULES.items():
        cls = ARCH_REGISTRY.get(name)
        assert cls.__module__ == f'llmhdr_basicsr.archs.{module}'
        assert cls.out_domain == 'linear'


@pytest.mark.parametrize('name', list(TINY))
def test_any_size_kept_finite_non_negative_fp32(name):
    net = build(name)
    for train in (True, False):
        net.train(train)
        for h, w in [(37, 53), (5, 7), (1, 1)]:
            x = ldr(2, h, w)
            with torch.no_grad():
                y = net(x)
            assert y.shape == (2, 3, h, w) and y.dtype == torch.float32
            assert torch.isfinite(y).all() and y.min() >= 0


@pytest.mark.parametrize('name', list(TINY))
def test_paper_default_parameter_count_is_the_documented_one(name):
    from basicsr.archs import build_network

    net = build_network({'type': name})
    count = sum(p.numel() for p in net.parameters())
    assert count == PAPER_DEFAULT_PARAMS[name]
    doc = importlib.import_module(f'llmhdr_basicsr.archs.{MODULES[name]}').__doc__
    assert f'{count:,}' in doc  # the docstring states this exact number


def test_reflect_padding_of_any_size():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert torch.equal(reflect_pad(x, 0, 2, 0, 1), torch.nn.functional.pad(x, (0, 2, 0, 1), mode='reflect'))
    big, size = pad_to_multiple(torch.rand(1, 3, 5, 7), 64, min_size=128, mode='reflect')
    assert big.shape[-2:] == (128, 128) and size == (5, 7)
    assert reflect_pad(torch.ones(1, 1, 1, 1), 3, 3, 3, 3).shape[-2:] == (7, 7)  # a 1-pixel side is replicated


# ---------------------------------------------------------------------------------------------------------- ExpandNet
def test_expandnet_output_range_and_global_size():
    net = build('ExpandNet', out_scale=16.0).eval()
    with torch.no_grad():
        y = net(ldr())
    assert 0 < y.min() and y.max() < 16.0
    with torch.no_grad():  # the global branch yields one 1x1 feature per image (broadcast to every pixel)
        assert net.global_features(ldr(1, 300, 200)).shape == (1, 4, 1, 1)
    with pytest.raises(ValueError, match='global_size'):
        build('ExpandNet', global_size=100)


def test_expandnet_tiles_share_the_global_branch():
    """GlobalStatsTiler computes the image_wide global branch once (as ExpandNet's own predict): tiles agree better."""
    from llmhdr_basicsr.utils.tiling import GlobalStatsTiler

    net = build('ExpandNet').eval()
    x = ldr(1, 64, 96)
    with torch.no_grad():
        full = net(x)
        shared = GlobalStatsTiler(net, 32, 16, 0, torch.device('cpu'))(x)
        net.global_branch.image_wide = False  # every tile its own global feature
        per_tile = GlobalStatsTiler(net, 32, 16, 0, torch.device('cpu'))(x)
    assert (shared - full).abs().max() < (per_tile - full).abs().max()


# ------------------------------------------------------------------------------------------------------------ HDRCNN
@pytest.mark.parametrize('transfer', ['gamma', 'srgb'])
def test_hdrcnn_blend_keeps_unclipped_pixels_and_takes_the_prediction_in_clipped_ones(transfer):
    net = build('HDRCNN', transfer=transfer).eval()
    x = ldr(2, 37, 53)
    x[..., 20:22, 30:33] = 0.97  # partly blended (0 < alpha < 1)
    with torch.no_grad():
        y, y_log = net(x), net.log_hdr(x)
    alpha = highlight_mask(x, 0.95).expand_as(x)
    lin = linearize(x, transfer, 2.0)
    keep = alpha == 0
    assert keep.float().mean() > 0.5 and torch.equal(y[keep], lin[keep])  # Eq. 1, alpha = 0: exactly f^-1(x)
    clipped = alpha == 1
    assert clipped.any() and torch.allclose(y[clipped], (y_log.exp() - EPS).clamp(min=0)[clipped])
    a = float(highlight_mask(torch.full((1, 3, 1, 1), 0.97), 0.95))
    assert a == pytest.approx(0.4, abs=1e-5)  # max(0, 0.97 - 0.95) / 0.05 (float32)


def _fake_vgg16_state(scale: float = 1.0) -> dict:
    """A state dict with torchvision's VGG16 ``features`` keys and shapes (random values)."""
    g = torch.Generator().manual_seed(1)
    shapes, in_ch = [], 3
    for ch, n in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(n):
            shapes.append((ch, in_ch, 3, 3))
            in_ch = ch
    state = {}
    for idx, shape in zip(TORCHVISION_CONV_INDICES, shapes):
        state[f'features.{idx}.weight'] = torch.randn(shape, generator=g) * scale
        state[f'features.{idx}.bias'] = torch.randn(shape[0], generator=g) * scale
    return state


def test_hdrcnn_vgg16_path_loads_a_local_torchvision_checkpoint(tmp_path):
    from basicsr.archs import build_network

    path = tmp_path / 'vgg16-397923af.pth'
    state = _fake_vgg16_state()
    torch.save(state, path)
    net = build_network({'type': 'HDRCNN', 'vgg16_path': str(path)})
    convs = net.encoder_convs()
    assert torch.equal(convs[0].weight, state['features.0.weight'])
    assert torch.equal(convs[-1].bias, state['features.28.bias'])


def test_hdrcnn_vgg16_path_errors_are_one_clear_line(tmp_path):
    from basicsr.archs import build_network

    missing = tmp_path / 'nowhere' / 'vgg16.pth'
    with pytest.raises(FileNotFoundError, match='vgg16-397923af.pth') as err:
        build_network({'type': 'HDRCNN', 'vgg16_path': str(missing)})
    assert '\n' not in str(err.value) and str(missing) in str(err.value)
    garbage = tmp_path / 'garbage.pth'
    garbage.write_text('not a checkpoint\n' * 3)
    with pytest.raises(ValueError, match='not a readable torch checkpoint') as err:
        build_network({'type': 'HDRCNN', 'vgg16_path': str(garbage)})
    assert '\n' not in str(err.value) and 'vgg16-397923af.pth' in str(err.value)
    wrong = tmp_path / 'wrong.pth'
    state = _fake_vgg16_state()
    del state['features.10.weight']
    torch.save(state, wrong)
    with pytest.raises(ValueError, match=r'features\.10\.weight is missing') as err:
        build_network({'type': 'HDRCNN', 'vgg16_path': str(wrong)})
    assert '\n' not in str(err.value)
    with pytest.raises(ValueError, match='width=64'):
        build_network({'type': 'HDRCNN', 'width': 8, 'vgg16_path': str(wrong)})


# -------------------------------------------------------------------------------------------------------------- FHDR
def test_fhdr_return_all_has_num_iter_outputs_and_the_last_is_the_output():
    net = build('FHDR', num_iter=3).eval()
    x = ldr(1, 21, 18)
    with torch.no_grad():
        outs, last = net(x, return_all=True), net(x)
    assert isinstance(outs, list) and len(outs) == 3
    assert torch.equal(outs[-1], last) and torch.equal(unwrap_output(outs), last)
    assert not torch.equal(outs[0], outs[-1])  # the feedback state changes the estimate
    assert all(0 < o.min() and o.max() < 1 for o in outs)  # (tanh + 1) / 2 with out_scale 1


def test_fhdr_gradient_through_the_hidden_state_unless_detached():
    x = ldr(1, 9, 11)
    outs, grads = {}, {}
    for detach in (False, True):
        net = build('FHDR', num_iter=2, detach_hidden=detach)  # same seed: same weights
        outs[detach] = net(x, return_all=True)
        grads[detach] = torch.autograd.grad(outs[detach][-1].sum(), net.feedback.gff.weight)[0]
    assert torch.equal(outs[False][-1], outs[True][-1])  # detaching changes the gradient only
    assert not torch.allclose(grads[False], grads[True])  # the unrolled loop adds iteration 1's path


# ------------------------------------------------------------------------------------------------------ SingleHDRUNet
def test_singlehdr_mask_and_identity_residual():
    y = torch.tensor([0.0, 0.025, 0.5, 0.975, 1.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert torch.allclose(well_exposed_mask(y)[0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 0.5, 0.0]), atol=1e-5)
    x = ldr(1, 37, 53)
    default = build('SingleHDRUNet', residual_scale=15.0).eval()
    net = build('SingleHDRUNet', residual_scale=15.0, zero_init_residual=True).eval()
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in default.parameters())
    with torch.no_grad():
        assert torch.equal(net(x), x)  # E = ReLU(I + tanh(0)) = I
        assert not torch.equal(default(x), x)
    net.train()
    net(x).sum().backward()
    assert net.head.weight.grad.abs().sum() > 0  # the zero head still learns
    net = build('SingleHDRUNet', residual_scale=3.0).eval()
    with torch.no_grad():
        e = net(x)
    assert e.min() >= 0 and e.max() <= 4.0


# ------------------------------------------------------------------------------------------------------- training
def _paired_options(root, network_g: dict) -> dict:
    exp = root / 'experiments' / 'peer'
    return {
        'name': 'peer', 'model_type': 'PairedHDRModel', 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0,
        'world_size': 1, 'root_path': str(root), 'manual_seed': 0, 'network_g': network_g,
        'path': {'experiments_root': str(exp), 'models': str(exp / 'models'), 'training_states': str(exp / 'ts'),
                 'log': str(exp), 'visualization': str(exp / 'vis'), 'pretrain_network_g': None},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': 1},
    }  # fmt: skip


def _pair(size: int = 32) -> dict:
    """One linear HDR scene with a highlight 6x white and its 8-bit-like photograph (gamma 2.2, clipped at 1)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing='ij')
    hdr = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * yy, 0.5 * torch.ones_like(xx)])[None]
    hdr[..., 4:12, 4:12] = 6.0
    return {'lq': hdr.clamp(0, 1) ** (1 / 2.2), 'gt': hdr * 3.0}  # the ground truth at an arbitrary scale


@pytest.mark.parametrize('name', list(TINY))
def test_one_supervised_step_through_paired_model(tmp_path, name):
    from basicsr.models import build_model

    torch.manual_seed(0)
    model = build_model(_paired_options(tmp_path, {'type': name, **TINY[name]}))
    assert model.out_domain == 'linear'
    before = {k: v.detach().clone() for k, v in model.net_g.named_parameters()}
    model.feed_data(_pair())
    model.optimize_parameters(1)
    loss = model.log_dict['l_pix']
    assert loss == loss and 0 < loss < float('inf')
    changed = [k for k, v in model.net_g.named_parameters() if not torch.equal(before[k], v)]
    assert len(changed) == len(before), sorted(set(before) - set(changed))
    assert model.output.shape == (1, 3, 32, 32) and torch.isfinite(model.output).all()
