"""VLM perception backend: client (both dialects, faults), reply parsing, maps, cache and the llmhdr-perceive CLI.

Everything runs against the scripted stub server in ``vlm_stub_server.py`` on 127.0.0.1; nothing leaves the machine.
"""

import json
import logging
import os
import re
import socket

import cv2
import numpy as np
import pytest
from vlm_stub_server import Reply, StubVLMServer, regions_reply, request_image

from llmhdr_basicsr import perceive
from llmhdr_basicsr.perception import cache as cache_mod
from llmhdr_basicsr.perception.cache import PerceptionCache, config_hash
from llmhdr_basicsr.perception.vlm_client import (
    GUIDANCE_PROMPT,
    LOSS_PROMPT,
    SYSTEM_PROMPT,
    VLMClient,
    VLMParseError,
    VLMRegion,
    VLMReport,
    extract_first_json,
    map_fractions,
    parse_reply,
    prepare_image,
    report_to_maps,
)
from llmhdr_basicsr.utils.hdr_io import write_hdr, write_ldr


@pytest.fixture
def stub():
    with StubVLMServer() as server:
        yield server


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.random((30, 60, 3), dtype=np.float32)  # display-referred [0, 1]


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return f'http://127.0.0.1:{port}'


def client_for(stub, **kw) -> VLMClient:
    kw.setdefault('timeout', 5.0)
    kw.setdefault('backoff', 0.0)
    kw.setdefault('max_side', 16)
    return VLMClient(kw.pop('base_url', stub.url + '/v1'), kw.pop('model', 'stub-model'), **kw)


# ---------------------------------------------------------------------------------------------------------------------
# Request shapes
# ---------------------------------------------------------------------------------------------------------------------


def test_openai_request_shape(stub, image):
    stub.push(regions_reply(('overexposed', [0.5, 0.0, 1.0, 0.5], 0.7)))
    client = client_for(stub, api_key='sekret')
    report = client.ask(image)

    (req,) = stub.chat_requests
    assert req.path == '/v1/chat/completions'
    assert req.headers['Authorization'] == 'Bearer sekret'
    body = req.body
    assert body['model'] == 'stub-model' and body['temperature'] == 0
    assert body['response_format'] == {'type': 'json_object'}
    assert body['messages'][0] == {'role': 'system', 'content': SYSTEM_PROMPT}
    assert body['messages'][1]['content'][0] == {'type': 'text', 'text': GUIDANCE_PROMPT}  # text part first
    sent = request_image(body)
    assert sent.shape == (8, 16, 3)  # 30x60 -> long side 16, INTER_AREA
    np.testing.assert_array_equal(sent, prepare_image(image, 16))  # PNG is lossless: exactly the prepared pixels

    assert report is not None and report.artifacts is True and report.image_size == (16, 8)
    assert [(r.label, r.box, r.confidence) for r in report.regions] == [('overexposed', (0.5, 0.0, 1.0, 0.5), 0.7)]


def test_ollama_request_shape(stub, image):
    stub.push(regions_reply(('underexposed', [0.0, 0.5, 1.0, 1.0], 0.5), artifacts=False))
    client = client_for(stub, base_url=stub.url, dialect='ollama', max_side=64)
    report = client.ask_detailed((image * 255).astype(np.uint8), kind='loss').report

    (req,) = stub.chat_requests
    assert req.path == '/api/chat'
    body = req.body
    assert body['model'] == 'stub-model' and body['stream'] is False and body['format'] == 'json'
    assert body['options']['temperature'] == 0
    assert body['messages'][-1]['content'] == LOSS_PROMPT
    assert request_image(body).shape == (30, 60, 3)  # smaller than max_side: sent unchanged
    assert report.artifacts is False and report.regions[0].label == 'underexposed'


def test_endpoint_urls():
    assert VLMClient('http://h:8000', 'm').chat_url == 'http://h:8000/v1/chat/completions'
    assert VLMClient('http://h:8000/v1/', 'm').chat_url == 'http://h:8000/v1/chat/completions'
    assert VLMClient('http://h:11434/v1', 'm', dialect='ollama').chat_url == 'http://h:11434/api/chat'
    assert VLMClient('http://h:11434', 'm', dialect='ollama').models_url == 'http://h:11434/api/tags'
    with pytest.raises(ValueError, match='dialect'):
        VLMClient('http://h', 'm', dialect='grpc')
    with pytest.raises(ValueError, match='base_url'):
        VLMClient('h:8000', 'm')


# ---------------------------------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------------------------------


def test_timeout_then_retry_success(stub, image):
    stub.push(Reply(delay=0.3), regions_reply(('artifact', [0, 0, 1, 1], 1.0)))
    client = client_for(stub, timeout=0.1, retries=1)
    result = client.ask_detailed(image)
    assert result.report is not None and result.attempts == 2
    assert len(stub.chat_requests) == 2


def test_timeout_gives_none(stub, image, caplog):
    stub.push(Reply(delay=0.3))
    client = client_for(stub, timeout=0.1, retries=0)
    with caplog.at_level(logging.WARNING, logger='basicsr.llmhdr'):
        result = client.ask_detailed(image)
    assert result.report is None and result.reason == 'timeout' and result.seconds < 0.3
    assert client.failures == {'timeout': 1}
    assert 'timeout' in caplog.text


def test_http_500_is_retried(stub, image):
    stub.push(Reply(status=500), Reply(status=503), regions_reply(('artifact', [0, 0, 0.5, 0.5], 0.9)))
    client = client_for(stub, retries=2)
    result = client.ask_detailed(image)
    assert result.report is not None and result.attempts == 3
    assert client.stats() == {'requests': 3, 'successes': 1, 'failures': {}}


def test_http_500_retries_exhausted_and_4xx_not_retried(stub, image):
    stub.push(Reply(status=500), Reply(status=500))
    client = client_for(stub, retries=1)
    assert client.ask_detailed(image).reason == 'http_500'
    assert len(stub.chat_requests) == 2
    stub.push(Reply(status=400), regions_reply())
    result = client.ask_detailed(image)
    assert result.report is None and result.reason == 'http_400' and result.attempts == 1
    assert len(stub.chat_requests) == 3


@pytest.mark.parametrize(
    'reply, reason',
    [
        (Reply('I am sorry, I cannot analyse this image.'), 'invalid_json'),
        (Reply('{"regions": [1, 2'), 'invalid_json'),  # truncated
        (Reply('{"verdict": "fine"}'), 'schema'),
        (Reply('{"regions": "none"}'), 'schema'),
        (Reply(raw=b'<html>gateway</html>'), 'bad_response'),
        (Reply(raw=b'{"choices": []}'), 'bad_response'),
    ],
)
def test_bad_replies_give_none(stub, image, reply, reason):
    stub.push(reply)
    client = client_for(stub, retries=2)
    result = client.ask_detailed(image)
    assert result.report is None and result.reason == reason
    assert result.attempts == 1  # parse failures are not retried
    assert client.failures == {reason: 1}


def test_unreachable_server_warns_once(image, caplog):
    client = VLMClient(closed_port_url() + '/v1', 'm', timeout=2.0, retries=2, backoff=0.0)
    with caplog.at_level(logging.WARNING, logger='basicsr.llmhdr'):
        results = [client.ask_detailed(image) for _ in range(3)]
    assert [r.report for r in results] == [None] * 3
    assert all(r.reason == 'unreachable' and r.attempts == 1 for r in results)  # refused: not retried
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and 'unreachable' in warnings[0].getMessage()
    assert 'Traceback' not in caplog.text
    assert client.failures == {'unreachable': 3}
    ok, message = client.health()
    assert not ok and 'cannot connect' in message


# ---------------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------------


def test_first_json_object_amid_chatter_and_fences():
    text = (
        'Sure! {not json} Here is my analysis:\n```json\n'
        '{"artifacts": true, "note": "a } and { inside a string", "regions": ['
        '{"label": "Over-Exposure", "box": [0.1, 0.2, 0.5, 0.6], "confidence": 0.9},'
        '{"label": "red", "bbox": {"xmin": 0, "ymin": 0, "xmax": 0.5, "ymax": 0.25}, "score": 80}]}\n'
        '```\nAnd a second object {"regions": []} that must be ignored.'
    )
    assert extract_first_json(text)['note'] == 'a } and { inside a string'
    report = parse_reply(text, (16, 8))
    assert [r.label for r in report.regions] == ['overexposed', 'artifact']
    assert report.regions[1].box == (0.0, 0.0, 0.5, 0.25) and report.regions[1].confidence == pytest.approx(0.8)
    with pytest.raises(VLMParseError) as err:
        parse_reply('no braces at all', (16, 8))
    assert err.value.reason == 'invalid_json'


def test_schema_clips_rescales_and_drops():
    obj = {
        'regions': [
            {'label': 'overexposed', 'box': [-0.2, 0.5, 1.03, 1.0], 'confidence': 1.7},  # clipped, conf % -> 0.017
            {'label': 'underexposed', 'box': [12, 6, 4, 2]},  # pixels of the 16x8 image sent, corners swapped
            {'label': 'sky', 'box': [0, 0, 1, 1]},  # unknown label
            {'label': 'artifact', 'box': [0.5, 0.1, 0.5, 0.9]},  # zero width
            {'label': 'artifact', 'box': [0.1, 0.2, 0.3]},  # 3 numbers
            {'label': 'artifact', 'box': [1.5, 1.2, 2.0, 3.0], 'confidence': 0.5},  # a small pixel box
            'not a dict',
        ]
    }
    report = parse_reply(json.dumps(obj), (16, 8))
    over, under, art = report.regions
    assert over.box == (0.0, 0.5, 1.0, 1.0) and over.confidence == pytest.approx(0.017)
    assert under.box == (0.25, 0.25, 0.75, 0.75) and under.confidence == 1.0
    assert art.box == pytest.approx((1.5 / 16, 1.2 / 8, 2 / 16, 3 / 8))
    assert report.rescaled == 2
    assert report.dropped == {'label': 1, 'degenerate': 1, 'box': 1, 'not_an_object': 1}
    assert report.artifacts is True  # not stated: inferred from the artifact region

    no = parse_reply('{"artifacts": "no", "regions": [{"label": "artifact", "box": [0, 0, 1, 1]}]}', (8, 8))
    assert no.artifacts is False and no.regions == [] and no.dropped == {'artifacts_false': 1}
    assert parse_reply('{"artifacts": false}', (8, 8)).regions == []


def test_wrong_labels_and_out_of_range_boxes_through_the_client(stub, image):
    content = json.dumps({'artifacts': True, 'regions': [
        {'label': 'ARTIFACTS', 'box': [0.5, -0.1, 1.04, 1.02], 'confidence': 0.6},  # out of range: clipped
        {'label': 'lens flare', 'box': [0, 0, 0.5, 0.5]},
        {'label': 'overexposed', 'box': [0.2, 0.2, 0.2, 0.2]},
    ]})  # fmt: skip
    stub.push(Reply(f'Here you go:\n```json\n{content}\n```'))
    report = client_for(stub).ask(image)
    assert report.dropped == {'label': 1, 'degenerate': 1}
    (region,) = report.regions
    assert region.label == 'artifact' and region.box == (0.5, 0.0, 1.0, 1.0) and region.confidence == 0.6


# ---------------------------------------------------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------------------------------------------------


def test_report_to_maps_union_and_fractions():
    report = VLMReport(True, [
        VLMRegion('artifact', (0.0, 0.0, 0.5, 0.5), 1.0),
        VLMRegion('overexposed', (0.5, 0.5, 1.0, 1.0), 0.6),
        VLMRegion('overexposed', (0.75, 0.75, 1.0, 1.0), 0.9),  # overlaps: union keeps the max
    ])  # fmt: skip
    maps = report_to_maps(report, 8, 16, soft_edge=0.0)
    assert maps.shape == (3, 8, 16) and maps.dtype == np.float32
    expected = np.zeros((3, 8, 16), np.float32)
    expected[0, :4, :8] = 1.0
    expected[1, 4:, 8:] = 0.6
    expected[1, 6:, 12:] = 0.9
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    np.testing.assert_allclose(map_fractions(maps), [0.25, 0.6 * 0.25 + 0.3 * 0.0625, 0.0], atol=1e-6)


def test_report_to_maps_soft_edges_keep_the_area():
    report = VLMReport(None, [VLMRegion('underexposed', (0.25, 0.25, 0.75, 0.75), 1.0),
                              VLMRegion('artifact', (0.5, 0.5, 0.51, 0.51), 1.0)])  # fmt: skip
    soft = report_to_maps(report, 32, 32, soft_edge=0.25)  # 8 px ramp centred on the edges
    assert 0.0 <= soft.min() and soft.max() <= 1.0
    assert soft[2].mean() == pytest.approx(0.25, abs=1e-6)  # box filter: area preserved
    assert soft[2, 16, 16] == 1.0 and soft[2, 16, 0] == 0.0 and 0.0 < soft[2, 16, 8] < 1.0
    assert soft[0].sum() == pytest.approx(0.01**2 * 32 * 32, rel=1e-4) and soft[0].max() > 0  # sub-pixel box survives


# ---------------------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------------------


def make_file(path, content: bytes = b'fake image bytes') -> str:
    with open(path, 'wb') as f:
        f.write(content)
    return str(path)


def test_cache_hit_miss_and_resize(tmp_path):
    cache = PerceptionCache(tmp_path / 'c', prompt='p', model='m', max_side=64)
    src = make_file(tmp_path / 'a.png')
    assert cache.get(src) is None and cache.stats() == {'hits': 0, 'misses': 1, 'corrupt': 0, 'lookups': 1}
    maps = np.random.default_rng(1).random((3, 8, 16)).astype(np.float32)
    path = cache.put(src, maps, report={'regions': []}, meta={'kind': 'guidance'})
    assert os.path.basename(path) == cache.key(src) + '.npz'
    assert re.fullmatch(r'[0-9a-f]{16}_[0-9a-f]{8}', cache.key(src))
    np.testing.assert_allclose(cache.get(src), maps, atol=1e-3)  # float16 storage
    np.testing.assert_allclose(cache.get(b'fake image bytes'), maps, atol=1e-3)  # same content, same entry
    entry = cache.get_entry(src)
    np.testing.assert_allclose(entry.fractions, maps.reshape(3, -1).mean(1), atol=1e-3)
    assert entry.report == {'regions': []} and entry.meta['kind'] == 'guidance' and entry.meta['source'] == 'a.png'
    big = cache.get(src, size=(16, 32))
    assert big.shape == (3, 16, 32) and big.dtype == np.float32
    assert big.mean() == pytest.approx(maps.mean(), abs=0.02)
    assert cache.stats()['hits'] == 4 and cache.contains(src) and len(cache) == 1


def test_cache_key_depends_on_content_prompt_model_and_size(tmp_path):
    src = make_file(tmp_path / 'a.png')
    base = PerceptionCache(tmp_path, 'p', 'm', 768)
    key = base.key(src)
    assert PerceptionCache(tmp_path, 'p', 'm', 768).key(src) == key
    others = [PerceptionCache(tmp_path, 'p2', 'm', 768), PerceptionCache(tmp_path, 'p', 'm2', 768),
              PerceptionCache(tmp_path, 'p', 'm', 512)]  # fmt: skip
    assert len({c.key(src) for c in others} | {key}) == 4
    assert all(c.key(src)[:16] == key[:16] for c in others)  # same content part
    assert base.config_hash == config_hash('p', 'm', 768)
    make_file(src, b'edited image bytes!')  # new size (and mtime): the memoised hash must not be reused
    assert base.key(src)[:16] != key[:16]


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    cache = PerceptionCache(tmp_path / 'c', 'p', 'm')
    src = make_file(tmp_path / 'a.png')

    final = cache.entry_path(src)
    during = {}

    def interrupted_savez(f, **arrays):
        f.write(b'PK\x03\x04 half an entry')
        f.flush()
        during['final_exists'] = os.path.exists(final)  # a hard kill here must leave nothing under the final name
        during['files'] = os.listdir(tmp_path / 'c')
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(cache_mod.np, 'savez_compressed', interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        cache.put(src, np.zeros((3, 4, 4)))
    assert during['final_exists'] is False
    assert len(during['files']) == 1 and during['files'][0].startswith('.tmp_')  # same folder: os.replace is atomic
    assert os.listdir(tmp_path / 'c') == []  # neither an entry nor a temporary file
    assert not cache.contains(src)
    monkeypatch.undo()
    cache.put(src, np.ones((3, 4, 4)))
    assert cache.get(src).min() == 1.0


def test_corrupt_entry_is_treated_as_missing(tmp_path, caplog):
    cache = PerceptionCache(tmp_path / 'c', 'p', 'm')
    src = make_file(tmp_path / 'a.png')
    path = cache.put(src, np.full((3, 8, 8), 0.5))
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
    with caplog.at_level(logging.WARNING, logger='basicsr.llmhdr'):
        assert cache.get(src) is None and cache.get(src) is None
    assert cache.stats()['corrupt'] == 2 and cache.stats()['misses'] == 2
    assert sum('corrupt entry' in r.getMessage() for r in caplog.records) == 1  # reported once
    assert path in caplog.text
    cache.put(src, np.full((3, 8, 8), 0.25))  # overwritten by the next put
    assert cache.get(src)[0, 0, 0] == 0.25


def test_cache_open_and_lookup(tmp_path, caplog):
    folder = tmp_path / 'c'
    src = make_file(tmp_path / 'a.png')
    PerceptionCache(folder, 'prompt text', 'm1', 512).put(src, np.full((3, 4, 8), 0.5))
    opened = PerceptionCache.open(folder)
    assert (opened.prompt, opened.model, opened.max_side) == ('prompt text', 'm1', 512)
    with caplog.at_level(logging.WARNING, logger='basicsr.llmhdr'):
        assert opened.lookup(src, (8, 16)).shape == (3, 8, 16)
        other = make_file(tmp_path / 'b.png', b'other')
        assert opened.lookup(other, (8, 16)) is None and opened.lookup(other, (8, 16)) is None
    assert sum('no entry' in r.getMessage() for r in caplog.records) == 1
    assert opened.summary() == 'perception cache: 1 hits, 2 misses (heuristic fallback), 0 corrupt'

    PerceptionCache(folder, 'prompt text', 'm2', 512).put(src, np.zeros((3, 4, 8)))
    with pytest.raises(ValueError, match='several'):
        PerceptionCache.open(folder)
    assert PerceptionCache.open(folder, model='m2').model == 'm2'
    with pytest.raises(FileNotFoundError, match='llmhdr-perceive'):
        PerceptionCache.open(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# llmhdr-perceive
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / 'images'
    rng = np.random.default_rng(2)
    for i in range(4):
        write_ldr(str(folder / f'ldr_{i}.png'), rng.random((12, 20, 3)))
    write_hdr(str(folder / 'scene.hdr'), (rng.random((10, 10, 3)) * 50).astype(np.float32))
    (folder / 'notes.txt').write_text('not an image')
    return folder


def cli(folder, cache_dir, url, *extra):
    args = ['-i', str(folder), '--cache', str(cache_dir), '--base-url', url, '--model', 'stub-model',
            '--max-side', '16', '--timeout', '5', '--backoff', '0', '--no-progress', *extra]  # fmt: skip
    return perceive.main(args)


def test_perceive_cli_resumes_without_asking_again(stub, image_folder, tmp_path, capsys):
    stub.default = regions_reply(('overexposed', [0.0, 0.0, 0.5, 1.0], 1.0))
    cache_dir = tmp_path / 'cache'
    assert cli(image_folder, cache_dir, stub.url + '/v1', '--limit', '2') == 0  # "interrupted" after 2 images
    assert len(stub.chat_requests) == 2
    assert '2 done, 0 cached, 0 failed, 3 left for later' in capsys.readouterr().out

    assert cli(image_folder, cache_dir, stub.url + '/v1', '--concurrency', '2') == 0
    assert len(stub.chat_requests) == 5  # only the 3 remaining images were asked
    assert '3 done, 2 cached, 0 failed' in capsys.readouterr().out

    assert cli(image_folder, cache_dir, stub.url + '/v1') == 0
    assert len(stub.chat_requests) == 5
    assert '0 done, 5 cached' in capsys.readouterr().out

    sizes = sorted(request_image(r.body).shape for r in stub.chat_requests)
    assert sizes == [(10, 10, 3)] + [(10, 16, 3)] * 4  # 12x20 -> 10x16 (long side 16); the HDR is 10x10
    hdr_sent = [request_image(r.body) for r in stub.chat_requests if request_image(r.body).shape == (10, 10, 3)][0]
    assert 20 < hdr_sent.mean() < 235  # tone-mapped, not clipped linear values

    opened = PerceptionCache.open(cache_dir)
    assert opened.get_entry(str(image_folder / 'ldr_0.png')).maps.shape == (3, 10, 16)  # stored at the sent size
    maps = opened.lookup(str(image_folder / 'ldr_0.png'), (12, 20))
    assert maps.shape == (3, 12, 20)
    assert maps[1, :, :8].min() > 0.9 and maps[1, :, 12:].max() < 0.1 and maps[[0, 2]].max() == 0.0


def test_perceive_cli_ctrl_c_keeps_finished_images(stub, image_folder, tmp_path, monkeypatch, capsys):
    real_as_completed = perceive.as_completed

    def interrupted_after_first(futures):
        it = real_as_completed(futures)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(perceive, 'as_completed', interrupted_after_first)
    cache_dir = tmp_path / 'cache'
    assert cli(image_folder, cache_dir, stub.url + '/v1') == 130
    assert 'INTERRUPTED' in capsys.readouterr().out
    n_first = len(stub.chat_requests)
    assert 1 <= n_first < 5 and len(PerceptionCache.open(cache_dir)) == n_first  # every answer received is kept
    monkeypatch.undo()
    assert cli(image_folder, cache_dir, stub.url + '/v1') == 0
    assert len(stub.chat_requests) == 5  # the re-run asked only for the rest


def test_perceive_cli_failures_write_nothing_and_are_retried_next_run(stub, image_folder, tmp_path, capsys):
    stub.responder = lambda index, req: regions_reply() if index < 2 else Reply(status=500)
    cache_dir = tmp_path / 'cache'
    assert cli(image_folder, cache_dir, stub.url + '/v1', '--retries', '0') == 0  # some succeeded
    out = capsys.readouterr().out
    assert '2 done, 0 cached, 3 failed (http_500: 3)' in out and out.count('FAILED') == 3
    assert len(PerceptionCache.open(cache_dir)) == 2

    stub.responder = None
    assert cli(image_folder, cache_dir, stub.url + '/v1') == 0
    assert len(stub.chat_requests) == 5 + 3
    assert '3 done, 2 cached, 0 failed' in capsys.readouterr().out

    stub.default = Reply('no JSON today')
    assert cli(image_folder, tmp_path / 'cache2', stub.url + '/v1') == 1  # nothing succeeded
    assert '0 done, 0 cached, 5 failed (invalid_json: 5)' in capsys.readouterr().out
    assert not [n for n in os.listdir(tmp_path / 'cache2') if n.endswith('.npz')]


def test_perceive_cli_ollama_dialect_and_env_api_key(stub, image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv('LLMHDR_VLM_API_KEY', 'from-env')
    assert (
        cli(image_folder, tmp_path / 'cache', stub.url, '--dialect', 'ollama', '--prompt', 'loss', '--limit', '1') == 0
    )
    (req,) = stub.chat_requests
    assert req.path == '/api/chat' and req.headers['Authorization'] == 'Bearer from-env'
    assert req.body['messages'][-1]['content'] == LOSS_PROMPT and request_image(req.body).shape[1] == 16
    assert req.body['options']['num_predict'] == 384  # the default reply limit, in Ollama's name for it
    assert cli(image_folder, tmp_path / 'cache2', stub.url, '--limit', '1', '--max-tokens', '64') == 0
    assert stub.chat_requests[-1].body['max_tokens'] == 64
    prompt_file = tmp_path / 'prompt.txt'
    prompt_file.write_text('Mark the sky. Reply with JSON.\n')
    assert cli(image_folder, tmp_path / 'cache', stub.url, '--dialect', 'ollama', '--prompt-file', str(prompt_file),
               '--limit', '1') == 0  # fmt: skip
    assert stub.chat_requests[-1].body['messages'][-1]['content'] == 'Mark the sky. Reply with JSON.'
    configs = PerceptionCache.configs(tmp_path / 'cache')
    assert len(configs) == 2  # another prompt: another cache configuration
    with pytest.raises(ValueError, match='several'):
        PerceptionCache.open(tmp_path / 'cache')
    loss_config = [c for c in configs if LOSS_PROMPT in c['prompt']][0]['config_hash'][:8]
    assert LOSS_PROMPT in PerceptionCache.open(tmp_path / 'cache', config=loss_config).prompt


def test_perceive_cli_unreachable_and_bad_input(image_folder, tmp_path, capsys):
    assert cli(image_folder, tmp_path / 'cache', closed_port_url() + '/v1') == 1
    out, err = capsys.readouterr()
    assert '5 failed (unreachable: 5)' in out and 'Traceback' not in out + err
    assert 'FAILED' not in out  # one error message, not one line per image
    assert cli(tmp_path / 'missing', tmp_path / 'cache', 'http://127.0.0.1:9/v1') == 2
    assert 'no such file or folder' in capsys.readouterr().err
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not a png')
    assert cli(bad, tmp_path / 'cache', 'http://127.0.0.1:9/v1', '--max-side', '0') == 2


def test_prepare_image_downscale_rule():
    assert perceive.stored_size((768, 384), 256) == (128, 256) and perceive.stored_size((16, 10), 256) == (10, 16)
    img = np.zeros((100, 37, 3), np.uint8)
    assert prepare_image(img, 50).shape == (50, 19, 3)  # 37 * 0.5 = 18.5, rounded half up
    assert prepare_image(np.zeros((3, 1000, 3), np.float32), 20).shape == (1, 20, 3)  # at least 1 px
    assert prepare_image(np.full((4, 4), 2.0, np.float32), 16).max() == 255  # grey, clipped
    with pytest.raises(ValueError, match='shape'):
        prepare_image(np.zeros((4, 4, 2)), 16)
    ref = cv2.resize(np.arange(64 * 3, dtype=np.uint8).reshape(8, 8, 3), (4, 4), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(prepare_image(np.arange(64 * 3, dtype=np.uint8).reshape(8, 8, 3), 4), ref)
