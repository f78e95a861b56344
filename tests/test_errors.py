"""Mistakes in options, data and paths end in one ``error:`` line naming the option or file, exit status 1.

Each case runs BasicSR's entry script as ``__main__`` in its own process. Most cases share one interpreter that has
imported basicsr once and ``fork()``s a child per case (:func:`conftest.run_forked`: the child runs the module as
``python -m basicsr.train`` does, and ends through ``sys.excepthook`` like the interpreter); a few cases start fresh
interpreters for each launch style (``basicsr/train.py``, ``-m basicsr.test``, ``llmhdr-train``), so the real
interpreter exit path is covered too.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_plugin import BASICSR_DIR

from conftest import REPO, DisabledWarnings, make_unpaired_folders, run_forked, run_python


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """Tiny data, a valid smoke option file (as a dict) and a tiny trained-looking checkpoint for the test cases."""
    root = tmp_path_factory.mktemp('errors')
    ldr, hdr = make_unpaired_folders(root / 'data', n_ldr=2, n_hdr=2, size=(36, 40))
    opt = yaml.safe_load((REPO / 'options' / 'llmhdr_smoke.yml').read_text())
    opt['datasets']['train'].update(dataroot_ldr=str(ldr), dataroot_hdr=str(hdr), batch_size_per_gpu=1)
    opt['datasets']['val'].update(dataroot_lq=str(ldr))
    opt['train']['total_iter'] = 1
    (root / 'garbage.pth').write_bytes(b'not a checkpoint at all')
    from llmhdr_basicsr.archs.feedback_unet_arch import FeedbackUNet

    other = {k: v for k, v in opt['network_g'].items() if k != 'type'}
    other['num_feat'] = 8  # another width, and no 'arch' entry in the file: cannot be repaired from the checkpoint
    torch.save({'params': FeedbackUNet(**other).state_dict()}, root / 'net_g_other.pth')
    (root / 'corrupt').mkdir()
    (root / 'corrupt' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    from llmhdr_basicsr.infer import save_inference_checkpoint

    arch = dict(opt['network_g'])
    net = FeedbackUNet(**{k: v for k, v in arch.items() if k != 'type'})
    save_inference_checkpoint(str(root / 'net_g_smoke.pth'), net.state_dict(), arch)
    return root, opt


def _write(root: Path, name: str, opt: dict) -> str:
    path = root / f'{name}.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return str(path)


def _set(opt: dict, dotted: str, value) -> dict:
    opt = copy.deepcopy(opt)
    node = opt
    keys = dotted.split('.')
    for key in keys[:-1]:
        node = node[key]
    if value is KeyError:
        node.pop(keys[-1])
    else:
        node[keys[-1]] = value
    return opt


def _test_opt(opt: dict, **paths) -> dict:
    """A test.py option file for the smoke network on the tiny LDR folder."""
    test = yaml.safe_load((REPO / 'options' / 'test_llmhdr_ldr_only.yml').read_text())
    test['num_gpu'] = 0
    test['datasets']['test_1']['dataroot_lq'] = opt['datasets']['val']['dataroot_lq']
    test['path'].update(paths)
    return test


def _cases(root: Path, opt: dict) -> dict[str, tuple[str, list[str], list[str]]]:
    """name -> (module, args, strings the single error line must contain)."""
    train, test = 'basicsr.train', 'basicsr.test'
    cases = {
        'wrong arch type': (train, _set(opt, 'network_g.type', 'FeedbackUnet'),
                            ['network_g.type', "'FeedbackUnet'", "did you mean 'FeedbackUNet'"]),
        'wrong model type': (train, _set(opt, 'model_type', 'CycleHDR'), ['model_type', 'CycleHDRModel']),
        'wrong loss type': (train, _set(opt, 'train.gan_opt.type', 'GANLos'), ['train.gan_opt.type', 'GANLoss']),
        'wrong dataset type': (train, _set(opt, 'datasets.train.type', 'UnpairedLDRHDR'),
                               ['datasets.train.type', 'UnpairedLDRHDRDataset']),
        'wrong metric type': (train, _set(opt, 'val.metrics', {'psnr': {'type': 'calculate_psnr_m'}}),
                              ['val.metrics.psnr.type', 'calculate_psnr_mu']),
        'wrong scheduler': (train, _set(opt, 'train.scheduler.type', 'LinearDecay'),
                            ['train.scheduler.type', 'LinearDecayLR']),
        'missing folder': (train, _set(opt, 'datasets.train.dataroot_ldr', 'no/such/ldr'),
                           ['datasets.train.dataroot_ldr', "'no/such/ldr'", 'does not exist', 'LDR images']),
        'missing meta file': (train, _set(opt, 'datasets.train.meta_info_ldr', 'no_meta.txt'),
                              ['datasets.train.meta_info_ldr', 'no_meta.txt']),
        'unknown train key': (train, _set(_set(opt, 'train.cycel_opt', opt['train']['cycle_opt']), 'train.cycle_opt',
                                          KeyError), ['train.cycel_opt', "did you mean 'cycle_opt'"]),
        'unknown top key': (train, _set(opt, 'netwrok_g', {'type': 'FeedbackUNet'}), ['netwrok_g', 'network_g']),
        'unknown dataset key': (train, _set(opt, 'datasets.train.crop_szie', 32),
                                ['datasets.train.crop_szie', "did you mean 'crop_size'"]),
        'bad batch size': (train, _set(opt, 'datasets.train.batch_size_per_gpu', 0),
                           ['datasets.train.batch_size_per_gpu', '0']),
        'bad total_iter': (train, _set(opt, 'train.total_iter', 'many'), ['train.total_iter', "'many'"]),
        'bad num_gpu': (train, _set(opt, 'num_gpu', 'two'), ['num_gpu', "'two'"]),
        'bad crop size': (train, _set(opt, 'datasets.train.crop_size', -3), ['datasets.train', 'crop_size', '-3']),
        'bad seed': (train, _set(opt, 'manual_seed', 'x'), ['manual_seed', "'x'"]),
        'missing name': (train, _set(opt, 'name', KeyError), ['name', 'missing']),
        'clip checkpoint missing': (train, _set(opt, 'train.clip_opt', {'type': 'CLIPContrastiveLoss',
                                                                        'checkpoint': 'no_clip.pt'}),
                                    ['train.clip_opt.checkpoint', 'no_clip.pt', 'allow_missing']),
        'pretrain missing': (train, _set(opt, 'path.pretrain_network_g', 'no_net.pth'),
                             ['path.pretrain_network_g', 'no_net.pth', 'does not exist']),
        'pretrain garbage': (train, _set(opt, 'path.pretrain_network_g', str(root / 'garbage.pth')),
                             ['path.pretrain_network_g', 'garbage.pth', 'cannot be read']),
        'pretrain other arch': (train, _set(opt, 'path.pretrain_network_g', str(root / 'net_g_other.pth')),
                                ['path.pretrain_network_g', 'net_g_other.pth', 'does not fit', 'shape mismatches']),
        'resume state missing': (train, _set(opt, 'path.resume_state', 'no.state'), ['path.resume_state', 'no.state']),
        'test placeholder': (test, _test_opt(opt), ['path.pretrain_network_g', 'placeholder', 'net_g_latest.pth']),
        'test no checkpoint': (test, _test_opt(opt, pretrain_network_g=None), ['path.pretrain_network_g', 'required']),
        'test missing folder': (test, _set(_test_opt(opt, pretrain_network_g=str(root / 'net_g_other.pth')),
                                           'datasets.test_1.dataroot_lq', 'no/photos'),
                                ['datasets.test_1.dataroot_lq', 'no/photos']),
        # read during the run, not checkable up front; through the plugin's own entry point (llmhdr-test)
        'corrupt image at test time': ('llmhdr_basicsr.test', _set(_test_opt(opt, pretrain_network_g=str(
            root / 'net_g_smoke.pth')), 'datasets.test_1.dataroot_lq', str(root / 'corrupt')),
            ['broken.png', 'truncated PNG']),
    }  # fmt: skip
    out = {}
    for i, (name, (module, option, needles)) in enumerate(cases.items()):
        if 'name' in option:
            option['name'] = f'case{i}'  # own experiment folder (BasicSR archives a reused name by the second)
        out[name] = (module, ['-opt', _write(root, f'case{i}', option)], needles)
    shipped = str(REPO / 'options' / 'test_llmhdr_paired.yml')  # as shipped: its checkpoint path is a placeholder
    out['shipped test file'] = (test, ['-opt', shipped], ['path.pretrain_network_g', 'placeholder', 'force_yml'])
    out['option file missing'] = (train, ['-opt', str(root / 'absent.yml')], ['-opt', 'absent.yml', 'does not exist'])
    (root / 'broken.yml').write_text('name: x\n  model_type: [unclosed\n')
    out['option file not yaml'] = (train, ['-opt', str(root / 'broken.yml')], ['broken.yml', 'not valid YAML', 'line'])
    out['force_yml without ='] = (train, ['-opt', _write(root, 'ok', opt), '--force_yml', 'train:total_iter'],
                                  ['--force_yml', 'key:sub=value'])  # fmt: skip
    out['force_yml unknown block'] = (train, ['-opt', _write(root, 'ok', opt), '--force_yml', 'trian:total_iter=3'],
                                      ['--force_yml', 'trian', 'does not exist'])  # fmt: skip
    out['--debug adds the traceback'] = (train, out['wrong arch type'][1] + ['--debug'], ['network_g.type'])
    return out


def _single_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


def test_option_mistakes_end_in_one_line_naming_the_option(workspace):
    root, opt = workspace
    cases = _cases(root, opt)
    results = run_forked([(m, a) for m, a, _ in cases.values()], cwd=root)
    ran = f'case{list(cases).index("corrupt image at test time")}'  # the only test run that got past the checks
    assert [p.name for p in (root / 'results').iterdir()] == [ran]  # rejected test runs created nothing
    for (name, (_, _, needles)), result in zip(cases.items(), results):
        assert result['code'] == 1, f'{name}: exit {result["code"]}\n{result["output"][-2000:]}'
        wanted = name == '--debug adds the traceback'
        assert ('Traceback (most recent call last)' in result['output']) == wanted, (
            f'{name}:\n{result["output"][-3000:]}'
        )
        line = _single_error_line(result['output'])
        for needle in needles:
            assert needle in line, f'{name}: {needle!r} not in {line!r}'


def test_each_launch_style_reports_one_line_and_traceback_on_request(workspace):
    """Fresh interpreters: BasicSR's script by path (with ``LLMHDR_TRACEBACK=1``: the traceback as well) and the
    ``llmhdr-train`` console script."""
    root, opt = workspace
    wrong = _write(root, 'fresh_wrong', _set(opt, 'network_g.type', 'FeedbackUnet'))
    script = Path(os.path.dirname(sys.executable)) / 'llmhdr-train'
    launches = {
        'script': ([str(BASICSR_DIR / 'train.py'), '-opt', wrong], {'LLMHDR_TRACEBACK': '1'}, ['network_g.type']),
        'console': ([str(script), '-opt', wrong], {}, ['network_g.type', "'FeedbackUNet'", 'PatchGANDiscriminator']),
    }  # fmt: skip
    for name, (args, env, needles) in launches.items():
        proc = run_python(args, cwd=root, env=env)
        assert proc.returncode == 1, f'{name}: {proc.returncode}\n{proc.stderr[-2000:]}'
        wanted = 'LLMHDR_TRACEBACK' in env
        assert ('Traceback (most recent call last)' in proc.stderr + proc.stdout) == wanted, f'{name}:\n{proc.stderr}'
        line = _single_error_line(proc.stderr)
        assert all(n in line for n in needles), (name, line)


# ------------------------------------------------------------------------------------------ one-line formatting
def test_one_line_condenses_worker_tracebacks_state_dict_reports_and_yaml_errors():
    from llmhdr_basicsr.utils.errors import OptionError, one_line

    worker = ValueError(
        'Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n'
        '  File "x.py", line 1, in f\n    raise ValueError(\'shared: bad crop\')\nValueError: shared: bad crop\n'
    )
    assert one_line(worker) == 'in a DataLoader worker: ValueError: shared: bad crop'
    report = RuntimeError(
        'Error(s) in loading state_dict for FeedbackUNet:\n\tMissing key(s) in state_dict: "crf.proj.weight", '
        '"crf.proj.bias". \n\tsize mismatch for head.weight: copying a param with shape [3, 8] ...'
    )
    text = one_line(report)
    assert '\n' not in text and '2 missing key(s) (crf.proj.weight, crf.proj.bias)' in text and 'head.weight' in text
    assert one_line(OptionError('a: b — c')) == 'a: b — c'
    assert one_line(KeyError('num_gpu')) == "option 'num_gpu' is missing"
    assert one_line(AttributeError('x')).startswith('internal error: AttributeError')


# --------------------------------------------------------------------------------- allow_missing on a wrong path
def test_allow_missing_turns_a_wrong_or_unusable_checkpoint_into_a_warning(tmp_path, monkeypatch):
    """CLIP, SAM and LPIPS with ``allow_missing: true``: a path that does not exist, or a file that is no checkpoint,
    switches the loss off with one warning naming the file (as for no path at all); without it, an error."""
    from basicsr.losses import build_loss
    from test_clip_sam_losses import TINY_ARCH, TINY_CLIP

    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'neither zip nor pickle')
    clip = {'type': 'CLIPContrastiveLoss', 'arch': TINY_ARCH, 'model_cfg': TINY_CLIP}
    for owner, block, key in (
        ('CLIPContrastiveLoss', clip, 'checkpoint'),
        ('SAMSemanticLoss', {'type': 'SAMSemanticLoss', 'variant': 'tiny'}, 'checkpoint'),
        ('LPIPSLoss', {'type': 'LPIPSLoss'}, 'weights'),
    ):
        for path in (tmp_path / 'absent.pt', junk):
            with DisabledWarnings(owner) as caught:
                loss = build_loss({**block, key: str(path), 'allow_missing': True})
            assert not loss.enabled, (owner, path)
            assert len(caught.messages) == 1 and path.name in caught.messages[0], (owner, caught.messages)
            if owner == 'LPIPSLoss':
                assert float(loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))) == 0.0
            with pytest.raises((FileNotFoundError, ValueError), match=path.name):
                build_loss({**block, key: str(path), 'allow_missing': False})
