"""Mixed precision (train.amp) and channels_last: option parsing, skipped steps under AMP, the scalers in the
training state, channels_last inputs, and (CUDA only) the smoke training run in bf16 and fp16.

On the CPU the AMP code path of the model is forced with ``enable_amp`` (what ``setup_amp`` calls on a GPU): CPU
autocast supports bf16 and fp16 and ``torch.amp.GradScaler('cpu')`` exists, so the same step code runs."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
import yaml
from test_model import _batch, _options

from conftest import REPO, assert_ok, run_python

NETS = ('g', 'g_hdr2ldr', 'd_hdr', 'd_ldr')


@pytest.fixture
def model_and_batch(tmp_path, tiny_unpaired):
    from basicsr.models import build_model

    torch.manual_seed(0)
    opt = _options(tmp_path, *tiny_unpaired)
    return build_model(copy.deepcopy(opt)), _batch(opt), opt


def _with_nan(batch: dict) -> dict:
    batch = dict(batch)
    batch['ldr'] = batch['ldr'].clone()
    batch['ldr'][0, 0, 0, 0] = float('nan')
    return batch


def _states(model) -> dict:
    return {n: copy.deepcopy(getattr(model, f'net_{n}').state_dict()) for n in NETS}


def test_amp_option_parsing(caplog):
    from llmhdr_basicsr.utils.amp import parse_amp

    cuda = torch.device('cuda')
    assert parse_amp('bf16', cuda) is torch.bfloat16 and parse_amp('fp16', cuda) is torch.float16
    for fp32 in (None, False, 'none', 'fp32'):
        assert parse_amp(fp32, cuda) is None
    with pytest.raises(ValueError, match='train.amp must be one of bf16, fp16'):
        parse_amp('fp8', cuda)
    assert parse_amp('bf16', torch.device('cpu')) is None  # no GPU: fp32, with a warning


def test_skipped_steps_are_counted_and_warned_about_once():
    from llmhdr_basicsr.utils.amp import SkippedSteps

    messages = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger('basicsr').addHandler(handler)
    try:
        skips = SkippedSteps()
        assert skips.allow(True, 'optimizer_g', 1) and skips.count == 0
        assert not skips.allow(False, 'optimizer_g', 2) and not skips.allow(False, 'optimizer_d', 3)
    finally:
        logging.getLogger('basicsr').removeHandler(handler)
    assert skips.count == 2
    assert len([m for m in messages if 'AMP: non-finite' in m]) == 1 and 'iteration 2' in messages[-1]
    restored = SkippedSteps()
    restored.load_state_dict(skips.state_dict())
    assert restored.count == 2


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_nan_loss_under_amp_skips_the_steps_and_counts_them(model_and_batch, dtype):
    """Under AMP a NaN batch does not abort (fp32 does: test_model.py): both optimizer steps are skipped, no weight
    changes, ``amp_skipped_steps`` counts them; the next finite batch trains again."""
    model, batch, _ = model_and_batch
    model.enable_amp(dtype)
    model.feed_data(batch)
    model.optimize_parameters(1)
    first = model.log_dict['amp_skipped_steps']  # fp16: the initial scale 2^16 may overflow the first step
    before = _states(model)
    model.feed_data(_with_nan(batch))
    model.optimize_parameters(2)
    assert model.log_dict['amp_skipped_steps'] == first + 2  # G and D
    for name, state in before.items():
        after = getattr(model, f'net_{name}').state_dict()
        assert all(torch.equal(after[k], v) for k, v in state.items()), f'net_{name} changed on a skipped step'
    if dtype is torch.float16:
        assert len(model.scalers) == 2  # one GradScaler per optimizer, each backed off once by its own overflow
    for it in range(3, 16):  # fp16: each GradScaler backs off (on its own) until its optimizer's steps fit
        model.feed_data(batch)
        model.optimize_parameters(it)
        changed = model.net_g.state_dict()
        if any(not torch.equal(changed[k], v) for k, v in before['g'].items()):
            break
    else:
        raise AssertionError('no generator step after the skipped one')


def test_amp_scalers_and_skip_count_are_saved_and_resumed(model_and_batch):
    from basicsr.models import build_model
    from basicsr.utils import make_exp_dirs

    model, batch, opt = model_and_batch
    make_exp_dirs(copy.deepcopy(opt))
    model.enable_amp(torch.float16)
    for it in (1, 2):
        model.feed_data(_with_nan(batch) if it == 2 else batch)
        model.optimize_parameters(it)
    model.save_training_state(epoch=0, current_iter=2)
    state = torch.load(Path(opt['path']['training_states']) / '2.state', weights_only=False)
    assert len(state['scalers']) == 2 and state['amp_skipped']['count'] == model.amp_skips.count >= 2
    resumed = build_model(copy.deepcopy(opt))
    resumed.enable_amp(torch.float16)
    resumed.resume_training(state)
    assert [s.get_scale() for s in resumed.scalers] == [s.get_scale() for s in model.scalers]
    assert resumed.amp_skips.count == model.amp_skips.count


def test_channels_last_inputs_give_the_contiguous_outputs(tmp_path, tiny_unpaired):
    """train.channels_last on the CPU: networks and every image batch of the forward are channels_last, generator
    outputs and the losses of a training step equal the contiguous ones within 1e-5."""
    import random

    import numpy as np
    from basicsr.models import build_model

    outputs, losses, models = {}, {}, {}
    for channels_last in (False, True):
        opt = _options(tmp_path / str(channels_last), *tiny_unpaired)
        opt['train']['channels_last'] = channels_last
        models[channels_last] = build_model(copy.deepcopy(opt))
    for name in NETS:  # the same weights (load_state_dict keeps the channels_last layout of the parameters)
        getattr(models[True], f'net_{name}').load_state_dict(getattr(models[False], f'net_{name}').state_dict())
    assert models[True].net_d_hdr.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    batch = _batch(opt)
    for channels_last, model in models.items():
        model.feed_data(batch)
        for key in ('real_ldr', 'real_hdr', 'cam_ldr', 'cam_target'):
            assert getattr(model, key).is_contiguous(memory_format=torch.channels_last) == channels_last, key
        with torch.no_grad():
            outputs[channels_last] = [model._run(model.net_g, model.real_ldr)[-1],
                                      model._run(model.net_g_hdr2ldr, model.real_hdr)[-1]]  # fmt: skip
        torch.manual_seed(1), random.seed(1), np.random.seed(1)
        model.optimize_parameters(1)
        losses[channels_last] = model.log_dict
    for a, b in zip(outputs[False], outputs[True]):
        assert (a - b).abs().max() < 1e-5
    for key, value in losses[False].items():
        assert abs(value - losses[True][key]) < 1e-5 * max(1.0, abs(value)), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason='autocast training needs a CUDA GPU')
@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_smoke_training_with_amp_on_cuda(tmp_path, tiny_unpaired, amp):
    """The smoke option file for a few iterations on the GPU with train.amp and channels_last: completes, logs the
    skipped-step count, saves both GradScalers (fp16) in the training state."""
    ldr, hdr = tiny_unpaired
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_smoke.yml').read_text())
    opt.update(name=f'amp_{amp}', num_gpu=1)
    opt['datasets']['train'].update(dataroot_ldr=str(ldr), dataroot_hdr=str(hdr), crop_size=32)
    opt['datasets']['val']['dataroot_lq'] = str(ldr)
    opt['train'].update(amp=amp, channels_last=True)
    (tmp_path / 'amp.yml').write_text(yaml.safe_dump(opt))
    proc = run_python(['-m', 'llmhdr_basicsr.train', '-opt', 'amp.yml'], cwd=tmp_path)
    assert_ok(proc)
    exp = tmp_path / 'experiments' / f'amp_{amp}'
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
    assert 'amp_skipped_steps' in next(exp.glob('train_*.log')).read_text()
    state = torch.load(exp / 'training_states' / '4.state', weights_only=False)
    assert state['amp_skipped']['count'] >= 0 and len(state['scalers']) == 2
    if amp == 'fp16':
        assert all(s['scale'] > 0 for s in state['scalers'])
