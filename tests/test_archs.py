"""Tests of the FeedbackUNet generator and the PatchGANDiscriminator (tiny widths, CPU)."""

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from llmhdr_basicsr.archs.arch_util import ConvLSTMCell, count_parameters, pad_to_multiple
from llmhdr_basicsr.archs.feedback_unet_arch import FeedbackUNet, MapGate, output_domain_base
from llmhdr_basicsr.archs.patchgan_arch import PatchGANDiscriminator
from llmhdr_basicsr.perception.heuristic import PerceptionMaps
from llmhdr_basicsr.utils.tonemap import model_to_hdr

TINY = dict(num_feat=4, lstm_feat=6, guidance_hidden=8)


def tiny(**kw):
    torch.manual_seed(0)
    return FeedbackUNet(**{**TINY, **kw})


def scene(n=2, h=37, w=53, seed=0):
    """Display-referred test images with flat, textured, clipped-bright and crushed-dark regions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g) * 0.6 + 0.2
    x[..., : h // 3, : w // 3] = 1.0  # clipped highlight -> over-exposure map
    x[..., -(h // 4) :, -(w // 4) :] = 0.01  # crushed shadows -> under-exposure map
    return x


def perturb(module, std=0.3, seed=1, skip=()):
    """Add N(0, std) noise to every parameter (except those whose name starts with one of ``skip``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.startswith(tuple(skip)):
                p.add_(torch.randn(p.shape, generator=g) * std)


def test_registered_and_not_colliding_with_basicsr():
    assert ARCH_REGISTRY.get('FeedbackUNet') is FeedbackUNet
    assert ARCH_REGISTRY.get('PatchGANDiscriminator') is PatchGANDiscriminator
    for name in ('VGGStyleDiscriminator', 'UNetDiscriminatorSN_basicsr'):
        assert ARCH_REGISTRY.get(name).__module__.startswith('basicsr.')


@pytest.mark.parametrize('out_domain', ['hdr_mu', 'ldr'])
@pytest.mark.parametrize('residual', [True, False])
def test_shapes_odd_sizes_and_range(out_domain, residual):
    net = tiny(out_domain=out_domain, residual=residual, num_iter=2)
    for h, w in [(37, 53), (5, 7)]:
        x = scene(2, h, w)
        outs = net(x, return_all=True)
        assert len(outs) == 2
        for y in outs:
            assert y.shape == (2, 3, h, w) and y.dtype == torch.float32
            assert y.min() > 0 and y.max() < 1


def test_default_widths():
    net = FeedbackUNet(gating=False, num_iter=1)
    widths = [net.enc1[1][0].out_channels, net.enc2[1][0].out_channels, net.enc3[1][0].out_channels]
    assert widths + [net.enc4[1][0].out_channels] == [64, 128, 256, 512]
    assert net.lstm.hidden_ch == 256 and net.head.out_channels == 3


@pytest.mark.parametrize('out_domain', ['hdr_mu', 'ldr'])
def test_untrained_residual_outputs_base(out_domain):
    net = tiny(out_domain=out_domain, guidance_dim=3)
    x = scene(2, 19, 23)
    base = output_domain_base(x, out_domain).clamp(net.residual_eps, 1 - net.residual_eps)
    for y in net(x, guidance=torch.randn(2, 3), return_all=True):
        torch.testing.assert_close(y, base, atol=1e-6, rtol=0)


def test_output_domain_base_formulas():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    hdr = output_domain_base(x, 'hdr_mu')
    assert hdr[0, 0] == 0 and hdr[0, 2].item() == pytest.approx(1.0, abs=1e-6)
    assert hdr[0, 1].item() > 0.5  # mu-law lifts the linearised mid tones
    back = output_domain_base(hdr, 'ldr')
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)  # the two bases invert each other on [0, 1]
    with pytest.raises(ValueError, match='out_domain'):
        output_domain_base(x, 'linear')


def train_steps(net, x, steps, guidance=None):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    target = torch.rand_like(x)
    for _ in range(steps):
        opt.zero_grad()
        outs = net(x, guidance=guidance, return_all=True)
        loss = sum((y - target).abs().mean() for y in outs) / len(outs)
        loss.backward()
        opt.step()
    return opt


def test_gradients_reach_every_parameter():
    # zero-initialised head, FiLM output layer and gates pass no gradient on the very first step (by design), so
    # take three steps (head -> FiLM last layer / gates -> FiLM first layer) and then check one more backward
    net = tiny(guidance_dim=4, num_iter=2)
    x, gvec = scene(2, 24, 24), torch.randn(2, 4)
    train_steps(net, x, 3, guidance=gvec)
    net.zero_grad()
    sum(y.mean() for y in net(x, guidance=gvec, return_all=True)).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_feedback_iterations_differ_and_last_is_output():
    net = tiny(num_iter=3)
    perturb(net, 0.1)
    x = scene(1, 24, 32)
    outs = net(x, return_all=True)
    assert len(outs) == 3
    for a in range(3):
        for b in range(a + 1, 3):
            assert (outs[a] - outs[b]).abs().max() > 1e-4
    torch.testing.assert_close(net(x), outs[-1], atol=0, rtol=0)
    assert len(tiny(num_iter=1)(x, return_all=True)) == 1
    # without maps and guidance only the ConvLSTM state distinguishes the iterations
    bare = tiny(num_iter=2, gating=False)
    perturb(bare, 0.1)
    y0, y1 = bare(x, return_all=True)
    assert (y0 - y1).abs().max() > 1e-4


def test_each_iteration_perceives_the_previous_estimate_in_the_output_domain():
    net = tiny(num_iter=3)
    perturb(net, 0.1)
    x = scene(1, 21, 26)
    seen, fed = [], []
    perceive, decode_step = net.perceive, net.decode_step
    net.perceive = lambda enc, est: seen.append(est) or perceive(enc, est)
    net.decode_step = lambda enc, est, *a, **k: fed.append(est) or decode_step(enc, est, *a, **k)
    outs = net(x, return_all=True)
    assert len(seen) == len(fed) == 3
    base = output_domain_base(x, 'hdr_mu', net.headroom)
    torch.testing.assert_close(seen[0][..., :21, :26], base, atol=0, rtol=0)  # t = 0: the input, in the output domain
    for t in (1, 2):  # t >= 1: the previous output, in the same domain, and it enters the decoder with its gradient
        torch.testing.assert_close(seen[t][..., :21, :26], outs[t - 1], atol=0, rtol=0)
        assert fed[t] is seen[t] and fed[t].requires_grad
        grad = torch.autograd.grad(outs[t].sum(), fed[t], retain_graph=True)[0]
        assert grad.abs().sum() > 0
    # detach_maps only changes the gradient, not the values
    attached = tiny(num_iter=3, detach_maps=False)
    attached.load_state_dict(net.state_dict())
    torch.testing.assert_close(attached(x), outs[-1], atol=0, rtol=0)


def _recorded_maps(net, x):
    """The perception maps of every feedback iteration of one forward pass."""
    maps = []
    perceive = net.perceive

    def record(enc, est):
        maps.append(perceive(enc, est))
        return maps[-1]

    net.perceive = record
    net(x)
    return maps


def test_feedback_maps_after_iteration_zero_are_not_trivial_on_a_clipped_input():
    # the maps of t >= 1 judge the current estimate against the input: clipped highlights that are still at white
    # stay marked, so iteration 1 gets the same over-exposure signal as iteration 0 (not the empty maps of an
    # estimate judged as a display image), for an untrained and for a perturbed network
    x = scene(1, 24, 24)
    perturbed = tiny(num_iter=3)
    perturb(perturbed, 0.05)
    clipped = x[0, 0] >= 1.0
    for net in (tiny(num_iter=3), perturbed):
        maps = _recorded_maps(net, x)
        for t in (1, 2):
            over = maps[t][0, 1, :24, :24]
            assert over[clipped].min() > 0.3 and over[~clipped].max() == 0
            assert maps[t][0, 2].max() > 0  # under-exposure of the dark corner


def test_feedback_input_off_keeps_only_gates_and_state():
    on, off = tiny(num_iter=2), tiny(num_iter=2, feedback_input=False)
    assert not hasattr(off, 'feedback') and hasattr(on, 'feedback')
    x = scene(1, 16, 16)
    torch.testing.assert_close(on(x), off(x), atol=0, rtol=0)  # both untrained: exactly the base


def test_no_state_leak_and_batch_independence():
    net = tiny(num_iter=3)
    perturb(net, 0.1)
    x, other = scene(2, 20, 20, seed=0), scene(2, 20, 20, seed=5)
    first = net(x)
    net(other)
    torch.testing.assert_close(net(x), first, atol=0, rtol=0)
    singles = torch.cat([net(x[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(singles, first, atol=1e-5, rtol=1e-5)


def test_map_gate_zero_and_one_maps():
    gate = MapGate(5)
    feat = torch.randn(2, 5, 6, 7)
    ones, zeros = torch.ones(2, 1, 6, 7), torch.zeros(2, 1, 6, 7)
    # untrained: identity for any map
    torch.testing.assert_close(gate(feat, torch.rand(2, 1, 6, 7)), feat, atol=0, rtol=0)
    perturb(gate, 0.5)
    # all-zero map: identity whatever the weights
    torch.testing.assert_close(gate(feat, zeros), feat, atol=0, rtol=0)
    # all-one map: per-channel constant factor 1 + tanh(bias + sum(weights)), in (0, 2)
    factor = 1 + torch.tanh(gate.conv.bias + gate.conv.weight.sum(dim=(1, 2, 3)))
    torch.testing.assert_close(gate(feat, ones), feat * factor.view(1, 5, 1, 1), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(factor, torch.ones_like(factor))


def test_gating_with_external_maps():
    x = scene(2, 21, 27)
    gated = tiny(residual=False, num_iter=1)
    plain = tiny(residual=False, num_iter=1, gating=False)
    perturb(gated, 0.2)
    missing, unexpected = plain.load_state_dict(gated.state_dict(), strict=False)
    assert not missing and all(k.startswith('gate_') for k in unexpected)
    zeros, ones = torch.zeros(2, 3, 21, 27), torch.ones(2, 3, 21, 27)
    # all-zero maps: every gate is the identity -> exactly the ungated network
    torch.testing.assert_close(gated(x, maps=zeros), plain(x), atol=1e-6, rtol=0)
    # all-one maps change the output, and differently from the heuristic maps of the input
    y_ones = gated(x, maps=ones)
    assert (y_ones - plain(x)).abs().max() > 1e-3
    assert (gated(x) - y_ones).abs().max() > 1e-3
    # PerceptionMaps objects are accepted like stacked tensors
    torch.testing.assert_close(gated(x, maps=PerceptionMaps.from_stack(ones)), y_ones, atol=0, rtol=0)
    # gating=False ignores maps entirely
    torch.testing.assert_close(plain(x, maps=ones), plain(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match='maps'):
        gated(x, maps=torch.zeros(2, 3, 20, 27))


def test_guidance_tensor_and_callable():
    net = tiny(guidance_dim=5, residual=False, num_iter=3)
    x, gvec = scene(2, 16, 24), torch.randn(2, 5)
    perturb(net, 0.1, skip=('film.',))
    # identity FiLM at initialisation
    torch.testing.assert_close(net(x, guidance=gvec), net(x), atol=0, rtol=0)
    perturb(net.film, 0.3)
    with_tensor = net(x, guidance=gvec)
    assert (with_tensor - net(x)).abs().max() > 1e-3
    seen = []

    def guide(prev):
        seen.append(prev)
        return gvec

    torch.testing.assert_close(net(x, guidance=guide), with_tensor, atol=0, rtol=0)
    outs = net(x, return_all=True, guidance=guide)
    assert len(seen) == 6 and seen[3] is None
    for t in (1, 2):
        torch.testing.assert_close(seen[3 + t], outs[t - 1], atol=0, rtol=0)
    # a guidance that depends on the previous output changes the later iterations only
    dyn = net(x, return_all=True, guidance=lambda p: gvec if p is None else gvec + p.mean() * 10)
    torch.testing.assert_close(dyn[0], outs[0], atol=0, rtol=0)
    assert (dyn[2] - outs[2]).abs().max() > 1e-4
    with pytest.raises(ValueError, match='guidance'):
        net(x, guidance=torch.randn(2, 4))
    with pytest.raises(ValueError, match='guidance_dim=0'):
        tiny()(x, guidance=gvec)


def test_bad_options_and_inputs_are_named():
    with pytest.raises(ValueError, match='out_domain'):
        tiny(out_domain='linear')
    with pytest.raises(ValueError, match='norm'):
        tiny(norm='batch')
    with pytest.raises(ValueError, match='num_iter'):
        tiny(num_iter=0)
    with pytest.raises(ValueError, match='perception_opt.*tau'):
        tiny(perception_opt={'clip_tau': 2.0})
    with pytest.raises(ValueError, match='perception_opt.*tau'):
        tiny(out_domain='ldr', perception_opt={'tau': 2.0})
    with pytest.raises(ValueError, match='perception_opt.*thresh'):
        tiny(perception_opt={'thresh': 0.9})
    with pytest.raises(ValueError, match=r'\(N, 3, H, W\)'):
        tiny()(torch.rand(1, 4, 16, 16))


def test_conv_lstm_cell_zero_state_shortcut():
    torch.manual_seed(0)
    cell = ConvLSTMCell(3, 4)
    x = torch.randn(2, 3, 5, 5)
    h0 = torch.zeros(2, 4, 5, 5)
    h, (h_, c) = cell(x)
    h_ref, (_, c_ref) = cell(x, (h0, h0.clone()))
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)
    assert h is h_ and cell.conv.bias[4:8].eq(1).all()  # forget-gate bias


def test_pad_to_multiple():
    x = torch.rand(1, 2, 5, 17)
    y, size = pad_to_multiple(x, 8, min_size=16)
    assert y.shape[-2:] == (16, 24) and size == (5, 17)
    assert torch.equal(y[..., :5, :17], x)


# ---------------------------------------------------------------------------------------------------------------------
def test_patchgan_default_param_count_and_patch_grid():
    d = PatchGANDiscriminator()
    # conv biases on (instance norm without affine): 3*64*16+64 + 64*128*16+128 + 128*256*16+256 + 256*512*16+512
    # + 512*16+1
    assert count_parameters(d) == 2_764_737
    # batch norm: the three normalised convs lose their biases (896) and gain affine weights (2 * 896)
    assert count_parameters(PatchGANDiscriminator(norm='batch')) == 2_764_737 - 896 + 2 * 896
    with torch.no_grad():
        assert d(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_patchgan_tiny_shapes_and_spectral_norm():
    torch.manual_seed(0)
    d = PatchGANDiscriminator(num_feat=4)
    assert d(torch.rand(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    sn = PatchGANDiscriminator(num_feat=4, norm='none', spectral_norm=True)
    convs = [m for m in sn.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(torch.nn.utils.parametrize.is_parametrized(m, 'weight') for m in convs)
    x = torch.rand(2, 3, 64, 64)
    for _ in range(30):  # power iterations run in training mode
        sn(x)
    for m in convs:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)
    out = sn(x)
    out.mean().backward()
    assert all(m.parametrizations.weight.original.grad is not None for m in convs)
    with pytest.raises(ValueError, match='norm'):
        PatchGANDiscriminator(norm='group')


# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    net = tiny(guidance_dim=3, num_iter=2)
    perturb(net, 0.1)
    x, gvec = scene(1, 21, 27), torch.randn(1, 3)
    cpu = net(x, guidance=gvec)
    gpu = net.cuda()(x.cuda(), guidance=gvec.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    d = PatchGANDiscriminator(num_feat=4)
    torch.testing.assert_close(d.cuda()(x.cuda()).cpu(), d.cpu()(x), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------- learned camera-curve base (crf_basis)
def test_crf_basis_starts_at_the_srgb_base_and_learns():
    torch.manual_seed(0)
    for out_domain in ('hdr_mu', 'ldr'):
        net = tiny(out_domain=out_domain, headroom=4, crf_basis=True)
        x = scene()
        base = output_domain_base(x, out_domain, 4).clamp(1e-4, 1 - 1e-4)
        y = net(x)
        assert (y - base).abs().max() < 1e-2  # 1 % admixture of the basis at the start (crf_basis.INIT_WEIGHT)
        y.mean().backward()
        assert net.crf.bias.grad.abs().sum() > 0 and net.crf.proj.weight.grad.abs().sum() > 0


def test_crf_basis_curves_known_values_and_monotone():
    from llmhdr_basicsr.archs.crf_basis import CRFBasisBase
    from llmhdr_basicsr.utils.tonemap import srgb_decode

    x = torch.linspace(0, 1, 101).view(1, 1, 1, 101).expand(1, 3, 1, 101)
    feat = torch.randn(1, 8, 2, 2)
    crf = CRFBasisBase(8, 'decode', basis=[['gamma', 2.2], ['sigmoid', 0.9, 0.6]])
    with torch.no_grad():
        crf.bias.copy_(torch.tensor([1e6, 0.0]))  # gamma 2.2 dominates: y = x ** 2.2
    torch.testing.assert_close(crf(x, feat), x.clamp(min=1e-6) ** 2.2, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        crf.bias.copy_(torch.tensor([-1.0, 1.0]))  # half sRGB, half sigmoid inverse t = (b y / (1 + b - y)) ** (1 / g)
    y = x[0, 0, 0, 50].item()
    expected = 0.5 * srgb_decode(torch.tensor(y)).item() + 0.5 * (0.6 * y / (1.6 - y)) ** (1 / 0.9)
    assert abs(crf(x, feat)[0, 0, 0, 50].item() - expected) < 1e-5
    with torch.no_grad():  # any non-negative mixture: monotone, 0 -> ~0, 1 -> 1
        crf.bias.copy_(torch.tensor([0.3, 2.0]))
        crf.proj.weight.normal_()
    out = crf(x, feat)[0, 0, 0]
    assert (out[1:] >= out[:-1]).all() and out[0] < 1e-4 and abs(out[-1].item() - 1) < 1e-6
    enc = CRFBasisBase(8, 'encode', basis=[['gamma', 2.0]])
    with torch.no_grad():
        enc.bias.fill_(1e6)
    torch.testing.assert_close(enc(x, feat), x.clamp(min=1e-6) ** 0.5, atol=1e-4, rtol=1e-4)


def test_crf_basis_by_name_extends_the_default_with_deeper_shoulders():
    """``crf_basis: shoulders`` is the default basis plus two deeper logistic shoulders: a mixture dominated by the
    deepest maps a near-white code value to a lower linear value than the default basis' strongest shoulder can
    (more highlight range under the shoulder); an unknown name is a one-line error naming the choices."""
    from llmhdr_basicsr.archs.crf_basis import DEFAULT_BASIS, SHOULDER_BASIS, CRFBasisBase

    net = tiny(out_domain='hdr_mu', headroom=4, crf_basis='shoulders')
    assert net.crf.basis == SHOULDER_BASIS and SHOULDER_BASIS[: len(DEFAULT_BASIS)] == DEFAULT_BASIS
    x = torch.full((1, 3, 1, 1), 0.9)
    feat = torch.zeros(1, 8, 1, 1)
    deep = CRFBasisBase(8, 'decode', basis=[SHOULDER_BASIS[-1]])
    strongest_default = CRFBasisBase(8, 'decode', basis=[['logistic', 0.6, -3.0]])
    for crf in (deep, strongest_default):
        with torch.no_grad():
            crf.bias.fill_(1e6)
    assert deep(x, feat)[0, 0, 0, 0].item() < 0.5 * strongest_default(x, feat)[0, 0, 0, 0].item()
    with pytest.raises(ValueError, match="crf_basis 'wide' is not a basis name.*shoulders"):
        tiny(out_domain='hdr_mu', headroom=4, crf_basis='wide')


def test_crf_basis_weights_never_lose_their_gradient():
    """A weight pushed below zero for every image must still be able to come back (a hard clamp killed the curve in
    the quality benchmark), and one Adam step on ``W`` moves the weights about as much as one on the bias."""
    from llmhdr_basicsr.archs.crf_basis import INIT_WEIGHT, CRFBasisBase

    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    feat = torch.randn(2, 64, 2, 2)
    crf = CRFBasisBase(64, 'decode')
    assert torch.allclose(crf.weights(feat, x), torch.full((2, len(crf.basis)), INIT_WEIGHT))
    with torch.no_grad():
        crf.bias.fill_(-0.1)  # far below zero: every weight ~ 0
    assert crf.weights(feat, x).max() < 1e-5
    (crf(x, feat) - x).abs().mean().backward()  # any loss that wants the curve to change
    assert (crf.bias.grad != 0).all() and (crf.proj.weight.grad != 0).any()

    crf = CRFBasisBase(64, 'decode')
    with torch.no_grad():
        crf.bias.fill_(0.5)  # where the soft clamp is linear: weight = z
    opt = torch.optim.Adam([crf.proj.weight], lr=1e-3)
    w0 = crf.weights(feat, x).detach()
    crf(x, feat).mean().backward()
    opt.step()
    step = (crf.weights(feat, x).detach() - w0).abs().max()
    # 64 bottleneck weights each moved by lr = 1e-3: ~0.05 without the 1 / C, ~1e-3 with it; the 32 histogram
    # weights add at most 2 lr (the two histograms sum to 1 each)
    assert 1e-5 < step < 4e-3


def test_crf_basis_sees_the_input_histogram():
    """Instance norm leaves the bottleneck mean nearly the same for every image; the histograms of the input tell a
    flat, dark photo from one whose highlights pile up under white, so the curve can differ between them."""
    from llmhdr_basicsr.archs.crf_basis import CRFBasisBase, ImageHistogram

    hist = ImageHistogram(8)
    dark = torch.full((1, 3, 16, 16), 0.1)
    shoulder = torch.full((1, 3, 16, 16), 0.95)
    h = hist(torch.cat([dark, shoulder]))
    assert (
        h.shape == (2, 16)
        and torch.allclose(h[:, :8].sum(1), torch.ones(2))
        and torch.allclose(h[:, 8:].sum(1), torch.ones(2))
    )
    assert h[0, :2].sum() > 0.9 and h[1, 6:8].sum() > 0.9
    torch.manual_seed(0)
    crf = CRFBasisBase(8, 'decode', hist_bins=8)
    with torch.no_grad():
        crf.proj.weight.normal_(0, 1.0)
    feat = torch.zeros(2, 8, 2, 2)  # the same bottleneck for both images
    w = crf.weights(feat, torch.cat([dark, shoulder]))
    assert (w[0] - w[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match='histogram'):
        crf.weights(feat)


def test_crf_basis_bad_options_are_named():
    with pytest.raises(ValueError, match='crf_basis'):
        tiny(crf_basis='yes')
    with pytest.raises(ValueError, match='residual=True'):
        tiny(crf_basis=True, residual=False)
    with pytest.raises(ValueError, match="'sigmoid', g > 0, beta > 0"):
        tiny(crf_basis=[['sigmoid', 0.9]])


# ------------------------------------------------------------- learned highlight expansion (highlight_expansion)
def _clipped_scene() -> torch.Tensor:
    """(1, 3, 64, 64) LDR with a clipped 24x24 block (a lamp or sky) on a dark gradient."""
    x = torch.linspace(0.05, 0.5, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64).clone()
    x[..., 8:32, 8:32] = 1.0
    return x


def test_highlight_expansion_lifts_only_saturated_regions_by_the_initial_stops():
    torch.manual_seed(0)
    x = _clipped_scene()
    plain = tiny(headroom=4)
    net = tiny(headroom=4, highlight_expansion={'init_stops': 2.0, 'sigma_s': 8.0})
    net.load_state_dict(plain.state_dict(), strict=False)  # same U-Net, the expansion adds its own parameters
    with torch.no_grad():
        lin_plain, lin = model_to_hdr(plain(x), 4), model_to_hdr(net(x), 4)
    inside, far = (..., slice(16, 24), slice(16, 24)), (..., slice(48, 64), slice(48, 64))
    torch.testing.assert_close(lin[inside] / lin_plain[inside], torch.full_like(lin[inside], 4.0), rtol=0.02, atol=0)
    torch.testing.assert_close(lin[far], lin_plain[far], rtol=1e-4, atol=1e-6)  # far from any clipped pixel
    assert float(lin.amax()) < 16.0  # never beyond the headroom


def test_highlight_expansion_stops_learn_and_detach_with_the_curve():
    torch.manual_seed(0)
    net = tiny(headroom=4, crf_basis=True, highlight_expansion=True)
    x = _clipped_scene()
    net(x).mean().backward()
    assert net.expansion.bias.grad.abs() > 0 and net.expansion.proj.weight.grad.abs().sum() > 0
    net.zero_grad(set_to_none=True)
    net(x, detach_curve=True).mean().backward()  # the terms that do not train the curve do not train the stops
    assert net.expansion.bias.grad is None and net.expansion.proj.weight.grad is None
    no_clip = x.clamp(max=0.9)  # nothing saturates: no expansion, no gradient to the stops
    net.zero_grad(set_to_none=True)
    net(no_clip).mean().backward()
    assert float(net.expansion.bias.grad.abs()) == 0.0


def test_highlight_expansion_region_stops_start_as_the_image_stops_and_learn_a_map():
    torch.manual_seed(0)
    x = _clipped_scene()
    plain = tiny(headroom=4, highlight_expansion={'init_stops': 2.0})
    net = tiny(headroom=4, highlight_expansion={'init_stops': 2.0, 'region': True})
    net.load_state_dict(plain.state_dict(), strict=False)  # the region term adds its own parameters, zero at start
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=0, atol=1e-6)
    net(x).mean().backward()
    assert net.expansion.local.weight.grad.abs().sum() > 0 and net.expansion.bias.grad.abs() > 0
    with torch.no_grad():
        net.expansion.local.weight.normal_(0.0, 1.0)  # any non-zero local term: stops vary across the image
        enc = net.encode(x)
        stops = net.expansion.stops(enc.bottleneck, enc.x)
    assert stops.shape == (x.size(0), 1, *enc.x.shape[-2:])
    assert float(stops.amax() - stops.amin()) > 0.1 and float(stops.amax()) <= 4.0
    net.expansion.fixed_stops = 1.5  # the oracle's constant replaces the map
    assert net.expansion.stops(enc.bottleneck, enc.x).unique().tolist() == [1.5]


def test_highlight_expansion_bad_options_are_named():
    with pytest.raises(ValueError, match='highlight_expansion'):
        tiny(highlight_expansion='yes')
    with pytest.raises(ValueError, match="'hdr_mu'"):
        tiny(out_domain='ldr', highlight_expansion=True)
    with pytest.raises(ValueError, match='headroom'):
        tiny(headroom=2, highlight_expansion=True)  # max_stops = headroom must exceed init_stops (2)
