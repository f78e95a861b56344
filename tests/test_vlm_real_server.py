"""The VLM client, ``llmhdr-perceive`` and the training-time judge against a REAL OpenAI-compatible server:
Hugging Face ``transformers serve`` on CPU with tiny random-weight LLaVA models built offline (``vlm_real_server``).

Two servers, each pinned to one model: ``random`` (random weights: replies are byte soup, never JSON) and
``scripted`` (answers ``vlm_real_server.SCRIPTED_REPLY``, then stops). The serving virtual environment is built once
(about a minute) and cached (``vlm_real_server.venv_dir``); where it cannot be built (no package index or wheel)
these tests skip, saying why. Any other problem fails them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import vlm_real_server as real

from llmhdr_basicsr.perception.cache import PerceptionCache
from llmhdr_basicsr.perception.judge import VLMJudge, render_for_judge
from llmhdr_basicsr.perception.vlm_client import SYSTEM_PROMPT, VLMClient, VLMParseError, extract_first_json
from llmhdr_basicsr.utils.hdr_io import write_hdr, write_ldr

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope='session')
def serving_python() -> Path:
    try:
        return real.serving_python()
    except real.ServingUnavailable as err:
        pytest.skip(f'no serving venv for transformers serve: {err}')


@pytest.fixture(scope='module')
def tiny_models(serving_python, tmp_path_factory) -> dict:
    """``build_tiny_models``' answer: the model folders and the serving venv's versions."""
    return real.build_tiny_models(serving_python, tmp_path_factory.mktemp('vlm_real_server_models'))


@pytest.fixture(scope='module')
def servers(serving_python, tiny_models, tmp_path_factory):
    """``{'random': ServeProcess, 'scripted': ServeProcess}``, both started at once and ready; stopped after this
    file (not at the end of the session: they hold memory while an xdist worker runs other files)."""
    logs = tmp_path_factory.mktemp('vlm_real_server_logs')
    procs = {
        name: real.ServeProcess(serving_python, path, logs / f'serve_{name}.log')
        for name, path in tiny_models['models'].items()
    }
    try:
        for proc in procs.values():
            proc.start()
        for proc in procs.values():
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture
def random_server(servers) -> real.ServeProcess:
    return servers['random']


@pytest.fixture
def scripted_server(servers) -> real.ServeProcess:
    return servers['scripted']


def chat(server: real.ServeProcess, parts: list, timeout: float = 60.0, **fields) -> tuple[int, str, object, float]:
    """One chat request ``[system, user(parts)]``; the body is decoded as JSON when it is JSON."""
    body = {'messages': [{'role': 'system', 'content': SYSTEM_PROMPT}, {'role': 'user', 'content': parts}], **fields}
    status, ctype, raw, seconds = real.post_json(server.url + '/v1/chat/completions', body, timeout)
    payload = json.loads(raw) if 'json' in ctype else raw.decode('utf-8', 'replace')
    return status, ctype, payload, seconds


def image_part(h: int = 48, w: int = 64, seed: int = 0) -> dict:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    png = cv2.imencode('.png', img)[1].tobytes()
    return {'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,' + base64.b64encode(png).decode()}}


TEXT = {'type': 'text', 'text': 'Does this image show synthesis artifacts?'}


def wait_for(condition, seconds: float = 60.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------------------------------------ (a) raw HTTP
def test_serving_venv_has_cpu_torch_and_no_torchvision(tiny_models):
    versions = tiny_models['versions']
    assert versions == {'torch': '2.13.0+cpu', 'transformers': '5.25.0', 'torchvision': False, 'cuda': False}
    assert [f'torch=={versions["torch"]}', f'transformers[serving]=={versions["transformers"]}'] == list(
        real.REQUIREMENTS[:2]
    )


def test_text_and_image_is_answered_and_the_image_costs_its_tokens(random_server):
    status, _, text_only, _ = chat(random_server, [TEXT], max_tokens=4, temperature=0)
    assert status == 200, text_only
    for h, w in ((48, 64), (20, 300)):  # any size: the processor resizes to 32 x 32 px, 4 x 4 patches
        status, _, with_image, _ = chat(random_server, [TEXT, image_part(h, w)], max_tokens=4, temperature=0)
        assert status == 200, with_image
        grown = with_image['usage']['prompt_tokens'] - text_only['usage']['prompt_tokens']
        assert grown == real.IMAGE_TOKENS == 16
    assert with_image['model'] == random_server.model and with_image['object'] == 'chat.completion'


def test_response_format_is_ignored_and_free_text_comes_back(random_server):
    status, _, payload, _ = chat(
        random_server, [TEXT, image_part()], max_tokens=16, temperature=0, response_format={'type': 'json_object'}
    )
    assert status == 200, payload
    text = payload['choices'][0]['message']['content']
    assert isinstance(text, str) and text
    with pytest.raises(VLMParseError) as err:
        extract_first_json(text)
    assert err.value.reason == 'invalid_json'


@pytest.mark.parametrize(
    'url',
    [
        'data:image/png;base64,AAAAnotapng',  # not base64
        'data:image/png;base64,' + base64.b64encode(b'no image in here').decode(),  # not an image
        'data:image/png;base64,' + base64.b64encode(b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR').decode(),  # truncated
    ],
)
def test_a_malformed_image_is_rejected_with_400_and_a_json_detail(random_server, url):
    status, ctype, payload, _ = chat(random_server, [TEXT, {'type': 'image_url', 'image_url': {'url': url}}])
    assert status == 400 and ctype.startswith('application/json')
    assert payload['detail'].startswith('Incorrect image source')


def test_the_model_must_be_the_served_path_or_absent(random_server):
    for fields in ({}, {'model': random_server.model}):
        status, _, payload, _ = chat(random_server, [TEXT, image_part()], max_tokens=2, **fields)
        assert status == 200 and payload['model'] == random_server.model, (fields, payload)
    for name in ('qwen2.5-vl-7b', '', Path(random_server.model).name):
        status, _, payload, _ = chat(random_server, [TEXT], max_tokens=2, model=name)
        assert status == 400 and "Server is pinned to '" in payload['detail'], (name, payload)


def test_max_tokens_bounds_the_reply_and_a_model_that_ends_needs_none(random_server, scripted_server):
    status, _, payload, seconds = chat(random_server, [TEXT, image_part()], max_tokens=16, temperature=0)
    assert status == 200 and payload['usage']['completion_tokens'] == 16
    assert payload['choices'][0]['finish_reason'] == 'length' and seconds < 10.0
    # without max_tokens the server allows 1024 tokens (a random model uses them all, 10-25 s on 2 busy cores): the
    # scripted model stops at its end-of-sequence token instead
    status, _, payload, seconds = chat(scripted_server, [TEXT, image_part()], temperature=0)
    assert status == 200 and payload['choices'][0]['finish_reason'] == 'stop' and seconds < 10.0
    assert payload['choices'][0]['message']['content'] == real.SCRIPTED_REPLY
    assert payload['usage']['completion_tokens'] == 2  # the answer token and </s>


# ------------------------------------------------------------------------------------------------ (b) client
def real_image(h: int = 40, w: int = 56) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xx / (w - 1), yy / (h - 1), np.full_like(xx, 0.5)], axis=-1)


def test_client_reports_the_random_models_text_as_invalid_json(random_server):
    client = VLMClient(base_url=random_server.url + '/v1', model=random_server.model, max_tokens=16, retries=0)
    assert client.health()[0]
    result = client.ask_detailed(real_image())
    assert result.report is None and result.reason == 'invalid_json' and result.attempts == 1
    assert 'no JSON' in result.message and result.seconds < 10.0
    assert client.stats() == {'requests': 1, 'successes': 0, 'failures': {'invalid_json': 1}}
    assert client.ask(real_image(24, 24), kind='loss') is None  # the other prompt: the same, and no exception
    assert client.stats()['failures'] == {'invalid_json': 2}


def test_client_http_400_names_the_servers_reason_and_is_not_retried(random_server):
    client = VLMClient(base_url=random_server.url, model='not-served', max_tokens=16, retries=2, backoff=5.0)
    assert client.chat_url == random_server.url + '/v1/chat/completions'  # /v1 appended to a bare host
    result = client.ask_detailed(real_image())
    assert result.report is None and result.reason == 'http_400' and result.attempts == 1 and result.seconds < 5.0
    assert 'Server is pinned to' in result.message and "requested 'not-served'" in result.message


def test_client_without_a_model_name_is_served_by_the_pinned_model(scripted_server):
    client = VLMClient(base_url=scripted_server.url + '/v1', model=None, retries=0)
    assert 'model' not in client.build_request(b'png', 'guidance')
    result = client.ask_detailed(real_image())
    assert result.reason is None and result.report is not None, result.message


def test_client_reads_the_scripted_models_report(scripted_server):
    client = VLMClient(base_url=scripted_server.url + '/v1', model=scripted_server.model, retries=0)  # default limit
    for kind, image in (('guidance', real_image()), ('loss', (real_image(30, 90) * 255).astype(np.uint8))):
        result = client.ask_detailed(image, kind)
        assert result.reason is None and result.attempts == 1, result.message
        report = result.report
        assert report.artifacts is True and report.raw_text == real.SCRIPTED_REPLY
        assert [(r.label, r.box, r.confidence) for r in report.regions] == [('overexposed', (0.0, 0.0, 1.0, 0.5), 0.9)]
        assert report.image_size == (image.shape[1], image.shape[0]) and report.n_dropped == 0
    assert client.stats() == {'requests': 2, 'successes': 2, 'failures': {}}


# ------------------------------------------------------------------------------------------------ (c) CLI
def perceive(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess:
    """The ``llmhdr-perceive`` console script of this environment, in a fresh process."""
    script = Path(sys.executable).parent / 'llmhdr-perceive'
    cmd = [str(script)] if script.exists() else [sys.executable, '-m', 'llmhdr_basicsr.perceive']
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
    return subprocess.run(
        [*cmd, *args, '--no-progress'], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.fixture
def two_images(tmp_path) -> Path:
    folder = tmp_path / 'images'
    folder.mkdir()
    write_ldr(str(folder / 'a.png'), real_image(24, 40))
    write_hdr(str(folder / 'b.hdr'), real_image(32, 32) * 4.0)
    return folder


def test_perceive_cli_caches_the_scripted_models_maps_and_resumes(scripted_server, two_images, tmp_path):
    cache_dir = tmp_path / 'cache'
    args = ('-i', str(two_images), '--cache', str(cache_dir), '--base-url', scripted_server.url + '/v1')
    args += ('--model', scripted_server.model, '--timeout', '30', '--retries', '0')
    proc = perceive(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'llmhdr-perceive: 2 done, 0 cached, 0 failed; 2 regions kept, 0 dropped' in proc.stdout
    cache = PerceptionCache.open(str(cache_dir), model=scripted_server.model)
    for name, (h, w) in (('a.png', (24, 40)), ('b.hdr', (32, 32))):
        entry = cache.get_entry(str(two_images / name))
        assert entry is not None and entry.maps.shape == (3, h, w), name
        assert entry.report['raw_text'] == real.SCRIPTED_REPLY and entry.report['artifacts'] is True
        artifact, over, under = entry.maps
        assert artifact.max() == 0.0 and under.max() == 0.0
        # the top half at the region's confidence 0.9, with a soft edge
        assert over[: h // 2 - 2].min() > 0.85 and over[h // 2 + 2 :].max() < 0.1
    again = perceive(*args)
    assert again.returncode == 0 and 'llmhdr-perceive: 0 done, 2 cached, 0 failed' in again.stdout, again.stdout


def test_perceive_cli_without_a_model_name_asks_the_pinned_model(scripted_server, tmp_path):
    image = tmp_path / 'one.png'
    write_ldr(str(image), real_image(16, 16))
    cache_dir = tmp_path / 'cache'
    proc = perceive('-i', str(image), '--cache', str(cache_dir), '--base-url', scripted_server.url, '--retries', '0')
    assert proc.returncode == 0 and 'llmhdr-perceive: 1 done, 0 cached, 0 failed' in proc.stdout, proc.stdout
    assert PerceptionCache.open(str(cache_dir), model='').contains(str(image))  # recorded under the empty name


def test_perceive_cli_server_refusals_write_nothing_and_exit_1(random_server, two_images, tmp_path):
    cache_dir = tmp_path / 'cache'
    proc = perceive(
        '-i', str(two_images), '--cache', str(cache_dir), '--base-url', random_server.url + '/v1',
        '--model', 'not-served', '--timeout', '30',
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'llmhdr-perceive: 0 done, 0 cached, 2 failed (http_400: 2)' in proc.stdout
    failed = [line for line in proc.stdout.splitlines() if line.startswith('FAILED ')]
    assert len(failed) == 2 and all(': http_400: HTTP 400 from ' in line and 'pinned' in line for line in failed)
    assert cache_dir.is_dir() and sorted(cache_dir.iterdir()) == []  # no entry (nor configuration) written


# ------------------------------------------------------------------------------------------------ (d) judge
def test_judge_counts_the_random_models_reply_as_a_failure_without_blocking(random_server):
    client = VLMClient(base_url=random_server.url + '/v1', model=random_server.model, max_tokens=16, retries=0)
    judge = VLMJudge(client, queue_size=2)
    (image,) = render_for_judge(torch.rand(1, 3, 24, 32) * 2.0)
    t0 = time.monotonic()
    assert judge.submit('img0', image, iteration=7) is True
    assert judge.submit('img0', image, iteration=8) is False  # still waiting: not queued twice
    assert time.monotonic() - t0 < 0.5  # submit never waits for the server
    assert wait_for(lambda: judge.stats()['pending'] == 0)
    assert judge.stats() == {'submitted': 1, 'answered': 0, 'dropped': 0, 'failed': 1, 'pending': 0, 'images': 0}
    assert judge.failure_reasons() == {'invalid_json': 1} and judge.lookup(['img0']) == [None]
    judge.close()


def test_judge_from_training_options_answers_with_the_scripted_models_maps(scripted_server):
    judge = VLMJudge.from_options(
        {'base_url': scripted_server.url + '/v1', 'model': scripted_server.model, 'timeout': 30.0, 'retries': 0,
         'judge_every': 1, 'map_size': 16}
    )  # fmt: skip
    images = render_for_judge(torch.rand(2, 3, 24, 32) * 2.0, render='reinhard')
    threads_before = threading.active_count()
    t0 = time.monotonic()
    assert [judge.submit(f'img{i}', im, iteration=3) for i, im in enumerate(images)] == [True, True]
    assert time.monotonic() - t0 < 0.5 and threading.active_count() <= threads_before + 1  # one worker thread
    assert wait_for(lambda: judge.stats()['answered'] == 2)
    assert judge.stats() == {'submitted': 2, 'answered': 2, 'dropped': 0, 'failed': 0, 'pending': 0, 'images': 2}
    for answer in judge.lookup(['img0', 'img1']):
        assert answer.iteration == 3 and answer.maps.shape == (3, 16, 16) and answer.maps.dtype == np.uint8
        artifact, over, under = answer.maps
        # the top half at the confidence 0.9 (230 / 255)
        assert artifact.max() == 0 and under.max() == 0 and over[:6].min() >= 229 and over[10:].max() < 25
    judge.close()
