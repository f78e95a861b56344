"""CycleHDRModel: training step, loss switches, NaN guard, checkpoints and resume, 2-process gloo (test.py outputs
and the shipped option files: test_option_files.py)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, assert_ok, run_python


def _options(root: Path, ldr: Path, hdr: Path, name: str = 'unit') -> dict:
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_smoke.yml').read_text())
    opt['name'] = name
    opt['datasets']['train'].update(dataroot_ldr=str(ldr), dataroot_hdr=str(hdr), crop_size=32, phase='train')
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False, root_path=str(root))
    exp = root / 'experiments' / name
    opt['path'].update(
        experiments_root=str(exp), models=str(exp / 'models'), training_states=str(exp / 'training_states'),
        log=str(exp), visualization=str(exp / 'visualization'),
    )  # fmt: skip
    return opt


def _batch(opt: dict, n: int = 2) -> dict:
    from basicsr.data import build_dataset
    from torch.utils.data import DataLoader

    dataset = build_dataset(opt['datasets']['train'])
    return next(iter(DataLoader(dataset, batch_size=n, shuffle=False)))


@pytest.fixture
def model_and_batch(tmp_path, tiny_unpaired):
    from basicsr.models import build_model

    torch.manual_seed(0)
    opt = _options(tmp_path, *tiny_unpaired)
    return build_model(copy.deepcopy(opt)), _batch(opt), opt


def test_training_step_logs_domain_named_losses_and_updates_all_networks(model_and_batch):
    model, batch, _ = model_and_batch
    before = {n: copy.deepcopy(getattr(model, f'net_{n}').state_dict()) for n in ('g', 'g_hdr2ldr', 'd_hdr', 'd_ldr')}
    model.feed_data(batch)
    model.optimize_parameters(1)
    expected = {
        'l_g_gan_hdr', 'l_g_gan_ldr', 'l_g_cycle_ldr', 'l_g_cycle_hdr', 'l_g_identity_hdr', 'l_g_identity_ldr',
        'l_g_llm_hdr', 'l_g_llm_ldr', 'l_d_hdr_real', 'l_d_hdr_fake', 'l_d_ldr_real', 'l_d_ldr_fake',
    }  # fmt: skip
    assert expected <= set(model.log_dict)
    assert all(isinstance(v, float) and v == v for v in model.log_dict.values())
    for name, state in before.items():
        after = getattr(model, f'net_{name}').state_dict()
        assert any(not torch.equal(state[k], after[k]) for k in state), f'net_{name} did not change'


def test_losses_can_be_switched_off(tmp_path, tiny_unpaired):
    from basicsr.models import build_model

    opt = _options(tmp_path, *tiny_unpaired)
    del opt['train']['identity_opt']
    opt['train']['llm_opt']['loss_weight'] = 0
    model = build_model(opt)
    model.feed_data(_batch(opt))
    model.optimize_parameters(1)
    assert not any(k.startswith(('l_g_identity', 'l_g_llm')) for k in model.log_dict)
    assert 'l_g_cycle_hdr' in model.log_dict


def test_nan_loss_stops_with_iteration_and_name_and_keeps_weights(model_and_batch):
    model, batch, _ = model_and_batch
    batch = dict(batch)
    batch['ldr'] = batch['ldr'].clone()
    batch['ldr'][0, 0, 0, 0] = float('nan')
    state = copy.deepcopy(model.net_g.state_dict())
    model.feed_data(batch)
    with pytest.raises(FloatingPointError, match=r'Non-finite loss l_g_\w+ .* at iteration 7'):
        model.optimize_parameters(7)
    for k, v in model.net_g.state_dict().items():
        assert torch.equal(v, state[k])


def test_linear_decay_schedule_in_iterations_and_in_fractions():
    """LinearDecayLR (iterations) and linear_decay_factor (fractions, the quality benchmark's wall-clock twin)."""
    from llmhdr_basicsr.models.lr_scheduler import LinearDecayLR, linear_decay_factor

    assert [linear_decay_factor(p, 0.5) for p in (0.0, 0.49, 0.5, 0.75, 1.0, 1.2)] == [1, 1, 1, 0.5, 0, 0]
    assert linear_decay_factor(0.99, 1.0) == 1.0 and linear_decay_factor(1.0, 1.0) == 1.0  # 1 = no decay
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = LinearDecayLR(opt, total_iter=8, decay_start=4)
    lrs = []
    for _ in range(9):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2, 0.2, 0.2, 0.2, 0.2, 0.15, 0.1, 0.05, 0.0])
    with pytest.raises(ValueError, match='decay_start'):
        LinearDecayLR(opt, total_iter=8, decay_start=8)


def test_save_then_resume_restores_networks_optimizers_and_iteration(model_and_batch):
    from basicsr.models import build_model
    from basicsr.utils import make_exp_dirs

    from llmhdr_basicsr.compat import load_resume_state

    model, batch, opt = model_and_batch
    make_exp_dirs(copy.deepcopy(opt))
    for it in (1, 2):
        model.feed_data(batch)
        model.optimize_parameters(it)
        model.update_learning_rate(it)
    model.save(epoch=0, current_iter=2)
    models_dir = Path(opt['path']['models'])
    assert sorted(p.name for p in models_dir.iterdir()) == sorted(
        f'net_{n}_2.pth' for n in ('g', 'g_hdr2ldr', 'd_hdr', 'd_ldr')
    )
    assert not list(models_dir.glob('.tmp_*'))  # atomic writes leave no temporary files

    resume_opt = copy.deepcopy(opt)
    resume_opt['auto_resume'] = True
    state = load_resume_state(resume_opt)  # fills path.pretrain_network_* like BasicSR's train.py
    assert state['iter'] == 2
    resumed = build_model(resume_opt)
    resumed.resume_training(state)
    for n in ('g', 'g_hdr2ldr', 'd_hdr', 'd_ldr'):
        a, b = getattr(model, f'net_{n}').state_dict(), getattr(resumed, f'net_{n}').state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f'net_{n} differs after resume'
    for o_old, o_new in zip(model.optimizers, resumed.optimizers):
        s_old, s_new = o_old.state_dict()['state'], o_new.state_dict()['state']
        assert s_old.keys() == s_new.keys()
        assert all(torch.equal(s_old[k]['exp_avg'], s_new[k]['exp_avg']) for k in s_old)
    assert [s.last_epoch for s in resumed.schedulers] == [s.last_epoch for s in model.schedulers]


def test_truncated_resume_state_is_reported_by_name(tmp_path):
    from llmhdr_basicsr.compat import load_resume_state

    states = tmp_path / 'exp' / 'training_states'
    states.mkdir(parents=True)
    (states / '4.state').write_bytes(b'PK\x03\x04 truncated')
    opt = {'auto_resume': True, 'num_gpu': 0, 'path': {'experiments_root': str(tmp_path / 'exp')}}
    with pytest.raises(RuntimeError, match='4.state'):
        load_resume_state(opt)


def test_two_process_gloo_training_completes(tmp_path, tiny_unpaired):
    ldr, hdr = tiny_unpaired
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_smoke.yml').read_text())
    opt['name'] = 'gloo'
    opt['datasets']['train'].update(dataroot_ldr=str(ldr), dataroot_hdr=str(hdr), crop_size=32, batch_size_per_gpu=1)
    opt['datasets'].pop('val')
    opt.pop('val')
    opt['train']['total_iter'] = 2
    (tmp_path / 'gloo.yml').write_text(yaml.safe_dump(opt))
    port = str(29500 + os.getpid() % 1000)
    cmd = ['-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
           '-m', 'llmhdr_basicsr.train', '-opt', 'gloo.yml', '--launcher', 'pytorch']  # fmt: skip
    proc = run_python(cmd, cwd=tmp_path, env={'OMP_NUM_THREADS': '1'})
    assert_ok(proc)
    models = tmp_path / 'experiments' / 'gloo' / 'models'
    assert (models / 'net_g_2.pth').is_file() and (models / 'net_d_ldr_latest.pth').is_file()
    log = next((tmp_path / 'experiments' / 'gloo').glob('train_*.log')).read_text()
    assert 'World size (gpu number): 2' in log


TINY_CLIP = {
    'embed_dim': 16,
    'vision_cfg': {'image_size': 32, 'layers': 1, 'width': 32, 'patch_size': 16, 'head_width': 16},
    'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 32, 'heads': 2, 'layers': 1},
}


def test_all_six_objectives_and_clip_guidance_train(tmp_path, tiny_unpaired):
    """CLIP contrastive + SAM semantic (tiny random models) and CLIP guidance of both generators in one step."""
    from basicsr.models import build_model

    torch.manual_seed(0)
    opt = _options(tmp_path, *tiny_unpaired)
    clip = {'type': 'CLIPContrastiveLoss', 'loss_weight': 1.0, 'arch': 'llmhdr-model-test-clip', 'model_cfg': TINY_CLIP,
            'random_weights': True}  # fmt: skip
    opt['train']['clip_opt'] = clip
    opt['train']['sam_opt'] = {'type': 'SAMSemanticLoss', 'loss_weight': 1.0, 'variant': 'tiny', 'random_weights': True}
    for key in ('network_g', 'network_g_hdr2ldr'):
        opt[key]['guidance_dim'] = 2 * TINY_CLIP['embed_dim']
    model = build_model(opt)
    batch = _batch(opt)
    before = copy.deepcopy(model.net_g.state_dict())
    for it in (1, 2):
        model.feed_data(batch)
        model.optimize_parameters(it)
    six = {'l_g_clip', 'l_g_sam', 'l_g_llm_hdr', 'l_g_gan_hdr', 'l_g_cycle_hdr', 'l_g_identity_hdr'}
    assert six <= set(model.log_dict)
    film = [k for k in before if 'film' in k.lower()]
    assert film, 'the generator has no FiLM guidance parameters'
    assert any(not torch.equal(before[k], model.net_g.state_dict()[k]) for k in film), 'guidance path got no update'
    clip_loss = model.losses['clip_opt']
    assert clip_loss.cache.hits > 0  # the second step found the fixed LDR side in the cache
    assert all(p.grad is None for p in clip_loss.parameters())  # the encoder stays frozen


def test_guidance_without_clip_encoder_is_a_clear_error(tmp_path, tiny_unpaired):
    from basicsr.models import build_model

    opt = _options(tmp_path, *tiny_unpaired)
    opt['network_g']['guidance_dim'] = 32
    with pytest.raises(ValueError, match='needs a CLIP encoder: set train.clip_opt'):
        build_model(opt)


def test_checkpoints_carry_the_architecture_for_inference(model_and_batch):
    from llmhdr_basicsr.infer import load_network

    model, _, opt = model_and_batch
    model.save(epoch=0, current_iter=-1)
    path = Path(opt['path']['models']) / 'net_g_latest.pth'
    ckpt = torch.load(path, weights_only=True)
    assert ckpt['arch']['type'] == 'FeedbackUNet' and ckpt['arch']['kwargs']['headroom'] == 4
    loaded = load_network('ldr2hdr', str(path), None, None, 'auto')  # no option file needed
    x = torch.rand(1, 3, 24, 24)
    model.net_g.eval()
    assert torch.allclose(loaded.net(x), model.net_g(x), atol=1e-6)


def test_virtual_camera_cycle_trains_g_y(tmp_path, tiny_unpaired):
    """camera_opt + the dataset's virtual_camera: l_g_camera is logged and moves G_Y toward the camera's scene."""
    from basicsr.models import build_model

    from llmhdr_basicsr.archs import crf_basis

    torch.manual_seed(0)
    opt = _options(tmp_path, *tiny_unpaired)
    opt['datasets']['train']['virtual_camera'] = True
    opt['network_g']['crf_basis'] = True
    for key in ('gan_opt', 'cycle_opt', 'identity_opt', 'llm_opt'):
        del opt['train'][key]
    opt['train']['camera_opt'] = {'type': 'L1Loss', 'loss_weight': 1.0}
    opt['train']['optim_g']['lr'] = 1e-2
    model = build_model(opt)
    np.random.seed(0)  # the dataset's crops and cameras
    batch = _batch(opt)

    def camera_error():
        with torch.no_grad():
            return (model.net_g(model.cam_ldr) - model.cam_target).abs().mean().item()

    model.feed_data(batch)
    before = camera_error()
    for it in range(1, 21):
        model.feed_data(batch)
        model.optimize_parameters(it)
    assert set(model.log_dict) == {'l_g_camera'}
    after = camera_error()
    assert after < 0.9 * before  # measured: 0.0120 -> 0.0097 (mean L1 in T-space on this batch)
    start = torch.full_like(model.net_g.crf.bias, crf_basis.soft_clamp_inverse(crf_basis.INIT_WEIGHT))
    assert (model.net_g.crf.bias.detach() - start).abs().max() > 1e-3  # the camera curve itself was learned


def test_paper_scale_options_build_and_train_at_tiny_width(tmp_path, tiny_unpaired, monkeypatch):
    """options/llmhdr.yml as shipped, only widths, crops and data roots shrunk: every block is accepted, CLIP/SAM
    without checkpoints switch themselves off (allow_missing), and one step trains with the virtual-camera cycle."""
    from basicsr.models import build_model

    monkeypatch.delenv('LLMHDR_CLIP_CHECKPOINT', raising=False)
    monkeypatch.delenv('LLMHDR_SAM_CHECKPOINT', raising=False)
    opt = _options(tmp_path, *tiny_unpaired)
    paper = yaml.safe_load((REPO / 'options' / 'llmhdr.yml').read_text())
    for key in ('network_g', 'network_g_hdr2ldr', 'network_d_hdr', 'network_d_ldr'):
        opt[key] = {**paper[key], 'num_feat': 4}
    opt['train'] = paper['train']
    train_set = {**paper['datasets']['train'], 'crop_size': 32, 'batch_size_per_gpu': 2, 'num_worker_per_gpu': 0}
    train_set.update(dataroot_ldr=opt['datasets']['train']['dataroot_ldr'],
                     dataroot_hdr=opt['datasets']['train']['dataroot_hdr'], phase='train')  # fmt: skip
    opt['datasets']['train'] = train_set
    torch.manual_seed(0)
    np.random.seed(0)
    model = build_model(opt)
    assert model.losses['clip_opt'] is None and model.losses['sam_opt'] is None
    model.feed_data(_batch(opt))
    model.optimize_parameters(1)
    assert {'l_g_gan_hdr', 'l_g_cycle_ldr', 'l_g_camera', 'l_g_llm_hdr'} <= set(model.log_dict)
    assert model.net_g.crf is not None and model.net_g_hdr2ldr.crf is not None


def test_camera_curve_learns_from_the_camera_cycle_only(tmp_path, tiny_unpaired):
    """train.curve_from_camera (default true): the adversarial, cycle and perception terms reach G_Y's weights but
    not its camera-curve mixture; with curve_from_camera false they reach the curve too."""
    from basicsr.models import build_model

    def grads_without_camera_batch(curve_from_camera: bool):
        torch.manual_seed(0)
        opt = _options(tmp_path, *tiny_unpaired)
        opt['network_g']['crf_basis'] = True
        opt['train']['curve_from_camera'] = curve_from_camera
        model = build_model(opt)
        np.random.seed(0)
        model.feed_data(_batch(opt))
        model.cam_ldr = None  # this step has no virtual-camera photo: every other term runs (with one warning)
        model.optimize_parameters(1)
        return model.net_g.crf.bias.grad, model.net_g.head.weight.grad

    curve, head = grads_without_camera_batch(True)
    assert (curve is None or not curve.any()) and head.abs().sum() > 0
    curve, head = grads_without_camera_batch(False)
    assert curve.abs().sum() > 0 and head.abs().sum() > 0


# ------------------------------------------------------------------------------ white, cycle, deep supervision
def test_white_comes_from_the_camera_for_every_term(tmp_path, tiny_unpaired):
    """With the virtual camera, the real HDR of every term is exposed like the camera photo (white = its clipping
    level); hdr_white: dataset keeps the dataset's percentile normalisation."""
    from basicsr.models import build_model

    opt = _options(tmp_path, *tiny_unpaired)
    batch = _batch(opt)
    model = build_model(copy.deepcopy(opt))
    model.feed_data(batch)
    assert torch.equal(model.real_hdr, model.cam_target)
    exposed = model.to_linear(model.real_hdr)
    clipped = (batch['cam_ldr'].amax(1) >= 1.0).float().mean()
    assert torch.isclose((exposed.amax(1) >= 1.0).float().mean(), clipped, atol=0.05)  # same clipping as the photo
    opt['train']['hdr_white'] = 'dataset'
    model = build_model(copy.deepcopy(opt))
    model.feed_data(batch)
    torch.testing.assert_close(model.real_hdr, model.to_model_hdr(batch['hdr']))
    with pytest.raises(ValueError, match='hdr_white'):
        build_model({**copy.deepcopy(opt), 'train': {**opt['train'], 'hdr_white': 'sky'}})


def test_the_cycle_term_has_something_to_do_from_the_first_step(tmp_path, tiny_unpaired):
    """G_X's untrained output clips the camera-exposed HDR like a camera, so G_Y(G_X(y)) misses the highlights: the
    HDR cycle is far from 0 at the start, several times what it is with white at the 99.9th percentile."""
    from basicsr.models import build_model

    values = {}
    for white in ('camera', 'dataset'):
        opt = _options(tmp_path, *tiny_unpaired)
        opt['train']['hdr_white'] = white
        opt['datasets']['train']['hdr_norm'] = 99.9
        torch.manual_seed(0)
        model = build_model(copy.deepcopy(opt))
        model.feed_data(_batch(opt, 4))
        model.optimize_parameters(1)
        values[white] = model.log_dict['l_g_cycle_hdr'] / opt['train']['cycle_opt']['loss_weight']
    assert values['camera'] > 1e-3 and values['camera'] > 2 * values['dataset']


def test_deep_supervision_averages_every_image_term_over_the_iterations(model_and_batch):
    model, batch, _ = model_and_batch
    model.feed_data(batch)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # untrained iterations are identical (zero-initialised heads): perturb the generators
        for net in (model.net_g, model.net_g_hdr2ldr):
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.deep_supervision = True
    model.forward()
    with torch.no_grad():
        terms = model.generator_terms()
        cam = [model.losses['camera_opt'](o, model.cam_target) for o in model.fake_cam]
        cyc = [model.losses['cycle_opt'](o, model.real_ldr) for o in model.rec_ldr]
    assert len(model.fake_cam) == 2 and not torch.equal(cam[0], cam[1])
    torch.testing.assert_close(terms['l_g_camera'], sum(cam) / 2)
    torch.testing.assert_close(terms['l_g_cycle_ldr'], sum(cyc) / 2)
    model.deep_supervision = False
    with torch.no_grad():
        last = model.generator_terms()
    torch.testing.assert_close(last['l_g_camera'], cam[-1])
