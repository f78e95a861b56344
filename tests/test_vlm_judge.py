"""The asynchronous VLM judge in training: a bounded queue that drops, answers that reach the loss of later crops,
a dead server that changes nothing, answers that survive a resume."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
from test_model import _batch, _options
from test_vlm import closed_port_url
from vlm_stub_server import Reply, StubVLMServer, regions_reply

from llmhdr_basicsr.perception.judge import Answer, VLMJudge, judged_maps
from llmhdr_basicsr.perception.vlm_client import VLMClient

WHOLE_OVER = regions_reply(('overexposed', [0.0, 0.0, 1.0, 1.0], 1.0), ('artifact', [0.0, 0.0, 0.5, 1.0], 1.0))


def wait_for(condition, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


def judge_for(url: str, **kw) -> VLMJudge:
    client = VLMClient(base_url=url + '/v1', model='stub', timeout=kw.pop('timeout', 5.0), retries=0)
    return VLMJudge(client, **kw)


def test_queue_drops_instead_of_blocking_when_the_server_is_slow():
    with StubVLMServer(default=Reply(WHOLE_OVER.content, delay=1.0)) as stub:
        judge = judge_for(stub.url, queue_size=1)
        image = np.full((16, 16, 3), 0.5, np.float32)
        t0 = time.monotonic()
        accepted = [judge.submit(f'img{i}', image, iteration=1) for i in range(6)]
        assert time.monotonic() - t0 < 0.5  # six submissions while the server sleeps 1 s per answer: no waiting
        assert judge.submit('img0', image, iteration=2) is False  # still waiting: not queued twice
        stats = judge.stats()
        # the worker holds at most one request, the queue one more: the other four were dropped
        assert sum(accepted) <= 2 and stats['dropped'] >= 4 and stats['submitted'] == 6
        assert wait_for(lambda: judge.stats()['answered'] == sum(accepted))
        judge.close()


def test_failures_are_counted_by_reason_and_keep_the_previous_answer():
    with StubVLMServer(replies=[WHOLE_OVER, Reply('no boxes here, sorry')]) as stub:
        judge = judge_for(stub.url)
        image = np.zeros((8, 8, 3), np.uint8)
        judge.submit('a', image, iteration=10)
        assert wait_for(lambda: judge.stats()['answered'] == 1)
        judge.submit('a', image, iteration=20)
        assert wait_for(lambda: judge.stats()['failed'] == 1)
        (answer,) = judge.lookup(['a'])
        assert answer.iteration == 10 and answer.maps.shape == (3, 64, 64) and answer.maps[1].min() > 200
        assert judge.failure_reasons() == {'invalid_json': 1}
        judge.close()


def test_judged_maps_are_cut_to_each_crop_window():
    maps = np.zeros((3, 8, 8), np.uint8)
    maps[0, :, :4] = 255  # artifact on the left half of the whole image
    answers = [Answer(5, maps), Answer(5, maps), None]
    windows = torch.tensor([[0, 0, 1, 0.5, 0], [0, 0.5, 1, 1, 0], [0, 0, 1, 1, 0]], dtype=torch.float32)
    cut, valid = judged_maps(answers, windows, (4, 4))
    assert valid.flatten().tolist() == [1.0, 1.0, 0.0]
    assert torch.allclose(cut[0, 0], torch.ones(4, 4)) and float(cut[1, 0].abs().max()) == 0.0
    assert float(cut[2].abs().max()) == 0.0 and float(cut[:, 1:].abs().max()) == 0.0
    assert judged_maps([None, None], windows[:2], (4, 4)) is None


def _judge_options(tmp_path, tiny_unpaired, url: str, name: str = 'judge') -> dict:
    opt = _options(tmp_path, *tiny_unpaired, name=name)
    opt['train']['llm_opt'].update(
        backend='vlm',
        judge={'base_url': url + '/v1', 'model': 'stub', 'timeout': 2.0, 'retries': 0, 'judge_every': 1},
    )
    return opt


def test_answers_reach_the_loss_of_later_crops_of_the_same_image(tmp_path, tiny_unpaired):
    from basicsr.models import build_model

    with StubVLMServer(default=WHOLE_OVER) as stub:
        opt = _judge_options(tmp_path, tiny_unpaired, stub.url)
        torch.manual_seed(0)
        model = build_model(copy.deepcopy(opt))
        batch = _batch(opt)
        batch['ldr'][..., :12, :12] = 1.0  # clipped corners: the soft over-exposure map has something to weigh
        model.feed_data(batch)
        assert model._perception_prior() is None  # nothing judged yet: the heuristic alone
        model.optimize_parameters(1)  # judge_every 1: this step's reconstructions of the batch images are queued
        assert len(stub.chat_requests) <= 2
        assert wait_for(lambda: model.judge.stats()['answered'] == len(set(batch['ldr_image_key'])))
        assert model.log_dict['judge_submitted'] >= 1.0
        model.feed_data(batch)
        prior = model._perception_prior()
        assert prior is not None and float(prior[:, 1].min()) > 0.9  # the whole image was judged over-exposed
        with torch.no_grad():
            model.forward()
            judged = model.generator_terms()['l_g_llm_hdr']
            judge, model.judge = model.judge, None
            heuristic = model.generator_terms()['l_g_llm_hdr']
            model.judge = judge
        assert float(judged) > float(heuristic) > 0  # flagged regions cost more
        judge.close()


def test_a_dead_server_changes_nothing_in_training(tmp_path, tiny_unpaired):
    from basicsr.models import build_model

    off = _options(tmp_path, *tiny_unpaired, name='off')
    on = _judge_options(tmp_path, tiny_unpaired, closed_port_url(), name='dead')
    batch = _batch(off)
    logs = []
    for opt in (off, on):
        torch.manual_seed(0)
        model = build_model(copy.deepcopy(opt))
        run = []
        for it in range(1, 4):
            model.feed_data(batch)
            model.optimize_parameters(it)
            run.append({k: v for k, v in model.log_dict.items() if k.startswith('l_')})
        logs.append(run)
    assert logs[0] == logs[1]
    assert wait_for(lambda: model.judge.stats()['failed'] >= 1)
    assert model.judge.stats()['answered'] == 0
    model.judge.close()


def test_answers_survive_a_resume(tmp_path, tiny_unpaired):
    from basicsr.models import build_model
    from basicsr.utils import make_exp_dirs

    from llmhdr_basicsr.compat import load_resume_state

    with StubVLMServer(default=WHOLE_OVER) as stub:
        opt = _judge_options(tmp_path, tiny_unpaired, stub.url)
        make_exp_dirs(copy.deepcopy(opt))
        torch.manual_seed(0)
        model = build_model(copy.deepcopy(opt))
        model.feed_data(_batch(opt))
        model.optimize_parameters(1)
        assert wait_for(lambda: model.judge.stats()['answered'] >= 1)
        model.save(epoch=0, current_iter=1)
        model.save_training_state(epoch=0, current_iter=1)
        before = model.judge.state_dict()['answers']
        resume_opt = copy.deepcopy(opt)
        resume_opt['auto_resume'] = True
        state = load_resume_state(resume_opt)
        resumed = build_model(resume_opt)
        resumed.resume_training(state)
        after = resumed.judge.state_dict()['answers']
        assert after.keys() == before.keys()
        assert all(after[k]['iteration'] == 1 and np.array_equal(after[k]['maps'], before[k]['maps']) for k in before)
        model.judge.close()


def test_judge_options_are_checked():
    from llmhdr_basicsr.losses.perception_loss import LLMPerceptionLoss

    with pytest.raises(ValueError, match='needs a judge block'):
        LLMPerceptionLoss(backend='vlm')
    with pytest.raises(ValueError, match='set backend: vlm'):
        LLMPerceptionLoss(judge={'base_url': 'http://127.0.0.1:1/v1'})
    with pytest.raises(ValueError, match='base_url'):
        VLMJudge.from_options({'model': 'x'})
    with pytest.raises(ValueError, match='judge_every'):
        VLMJudge.from_options({'base_url': 'http://127.0.0.1:1/v1', 'model': 'x', 'judge_every': 0})
    with pytest.raises(ValueError, match='client options'):
        VLMJudge.from_options({'base_url': 'http://127.0.0.1:1/v1', 'model': 'x', 'colour': 'red'})
