"""VLM reply forms of open models (Qwen2.5-VL lists, Molmo points, Qwen-VL refs, Kosmos-2, Florence-2, Yes/No, pixel
counts) and client details (HTTP error bodies, an omitted model, the max_tokens default).

The replies are written the way the models answer, chatter and special tokens included; the client tests run against
the scripted stub server in ``vlm_stub_server.py`` on 127.0.0.1.
"""

import json

import numpy as np
import pytest
from vlm_stub_server import Reply, StubVLMServer, regions_reply

from llmhdr_basicsr import perceive
from llmhdr_basicsr.perception.vlm_client import (
    POINT_BOX,
    VLMClient,
    VLMParseError,
    VLMRegion,
    VLMReport,
    map_fractions,
    normalise_label,
    parse_reply,
    parse_yes_no,
    report_to_maps,
)
from llmhdr_basicsr.utils.hdr_io import write_ldr

SENT = (768, 512)  # (width, height) of the image sent


def boxes(report: VLMReport) -> list[tuple[str, tuple[float, ...]]]:
    return [(r.label, r.box) for r in report.regions]


def assert_regions(report: VLMReport, expected: list[tuple[str, tuple[float, ...]]]) -> None:
    assert [label for label, _ in boxes(report)] == [label for label, _ in expected]
    for (_, got), (_, want) in zip(boxes(report), expected):
        assert got == pytest.approx(want, abs=1e-9)


def point_box(fx: float, fy: float) -> tuple[float, float, float, float]:
    h = POINT_BOX / 2
    return (max(fx - h, 0.0), max(fy - h, 0.0), min(fx + h, 1.0), min(fy + h, 1.0))


# ---------------------------------------------------------------------------------------------------------------------
# Location forms
# ---------------------------------------------------------------------------------------------------------------------


def test_qwen25_bbox_list_in_pixels_of_the_sent_image():
    text = (
        'Here are the regions I found in the image:\n\n```json\n[\n'
        '\t{"bbox_2d": [412, 0, 768, 190], "label": "overexposed sky"},\n'
        '\t{"bbox_2d": [0, 351, 205, 512], "label": "dark shadows under the bench"},\n'
        '\t{"bbox_2d": [530, 210, 610, 260], "label": "halo around the lamp"},\n'
        '\t{"bbox_2d": [100, 100, 300, 200], "label": "tree"}\n]\n```\n'
        'The sky is clipped near the sun.'
    )
    report = parse_reply(text, SENT)
    assert report.format == 'qwen_bbox' and report.converted == {'qwen_bbox': 4}
    assert_regions(report, [
        ('overexposed', (412 / 768, 0.0, 1.0, 190 / 512)),
        ('underexposed', (0.0, 351 / 512, 205 / 768, 1.0)),
        ('artifact', (530 / 768, 210 / 512, 610 / 768, 260 / 512)),
    ])  # fmt: skip
    assert report.rescaled == 3 and report.dropped == {'label': 1}  # "tree" is no known kind
    assert report.artifacts is True  # not stated: inferred from the artifact box


def test_qwen25_points_become_small_boxes():
    text = (
        '```json\n[\n  {"point_2d": [384, 128], "label": "blown-out highlights"},\n'
        '  {"point_2d": [760, 505], "label": "crushed blacks"}\n]\n```'
    )
    report = parse_reply(text, SENT)
    assert report.format == 'qwen_point' and report.converted == {'qwen_point': 2} and report.rescaled == 2
    over, under = report.regions
    assert over.label == 'overexposed' and over.box == pytest.approx(point_box(0.5, 0.25))
    assert over.box[2] - over.box[0] == pytest.approx(POINT_BOX)  # 5 % of the width, 5 % of the height
    x0, y0, x1, y1 = under.box  # near the bottom-right corner: clipped at the border
    assert under.label == 'underexposed' and (x1, y1) == (1.0, 1.0)
    assert x0 == pytest.approx(760 / 768 - POINT_BOX / 2) and y0 == pytest.approx(505 / 512 - POINT_BOX / 2)


def test_molmo_point_and_points():
    text = (
        ' Counting the over-exposed areas shows a total of 1. <point x="61.5" y="40.6" alt="overexposed window">'
        'overexposed window</point>\n'
        '<points x1="10.0" y1="82.5" x2="30.5" y2="90.0" x3="52.0" y3="88.4" alt="dark shadows">dark shadows</points>'
        ' and <point x="20" y="20" alt="the dog">the dog</point>'
    )
    report = parse_reply(text, SENT)
    assert report.format == 'molmo_points' and report.converted == {'molmo_points': 5}
    assert_regions(report, [
        ('overexposed', point_box(0.615, 0.406)),
        ('underexposed', point_box(0.10, 0.825)),
        ('underexposed', point_box(0.305, 0.90)),
        ('underexposed', point_box(0.52, 0.884)),
    ])  # fmt: skip
    assert report.dropped == {'label': 1} and report.rescaled == 0  # percentages: never rescaled by pixels


def test_qwen_vl_ref_box_and_qwen2_vl_tokens():
    v1 = (
        'The over-exposed part is <ref>overexposed sky</ref><box>(123,45),(678,390)</box><box>(0,0),(100,80)</box>'
        ' and the crushed shadows are at <ref>underexposed area</ref><box>(10,700),(400,998)</box>.'
    )
    report = parse_reply(v1, SENT)
    assert report.format == 'qwen_ref_box' and report.converted == {'qwen_ref_box': 3}
    assert_regions(report, [
        ('overexposed', (0.123, 0.045, 0.678, 0.39)),
        ('overexposed', (0.0, 0.0, 0.1, 0.08)),  # a second box after the same ref
        ('underexposed', (0.01, 0.7, 0.4, 0.998)),
    ])  # fmt: skip
    v2 = '<|object_ref_start|>clipped sky<|object_ref_end|><|box_start|>(123,45),(678,390)<|box_end|><|im_end|>'
    report = parse_reply(v2, SENT)
    assert report.format == 'qwen_ref_box' and boxes(report) == [
        ('overexposed', pytest.approx((0.123, 0.045, 0.678, 0.39)))
    ]


def test_kosmos2_patch_index_boxes():
    text = (
        '<grounding> An image of<phrase> an overexposed sky</phrase><object><patch_index_0044><patch_index_0863>'
        '</object> above<phrase> dark shadows</phrase><object><patch_index_0896><patch_index_0927>'
        '</delimiter_of_multi_objects/><patch_index_0960><patch_index_1023></object> and<phrase> a snowman</phrase>'
        '<object><patch_index_0300><patch_index_0400></object>.'
    )
    report = parse_reply(text, SENT)
    assert report.format == 'kosmos' and report.converted == {'kosmos': 4}
    assert_regions(report, [
        ('overexposed', (12 / 32, 1 / 32, 32 / 32, 27 / 32)),  # 44 = row 1, col 12; 863 = row 26, col 31
        ('underexposed', (0.0, 28 / 32, 1.0, 29 / 32)),  # 896 = row 28, col 0; 927 = row 28, col 31
        ('underexposed', (0.0, 30 / 32, 1.0, 1.0)),  # the second object of the phrase
    ])  # fmt: skip
    assert report.dropped == {'label': 1}  # "a snowman"


def test_florence2_loc_tokens():
    text = (
        '</s><s>overexposed sky<loc_123><loc_45><loc_678><loc_390><loc_0><loc_0><loc_99><loc_99>'
        'halo<loc_500><loc_500><loc_599><loc_599>car<loc_1><loc_2><loc_3><loc_4></s>'
    )
    report = parse_reply(text, SENT)
    assert report.format == 'florence' and report.converted == {'florence': 4}
    assert_regions(report, [
        ('overexposed', (0.1235, 0.0455, 0.6785, 0.3905)),  # bin centres: (b + 0.5) / 1000
        ('overexposed', (0.0005, 0.0005, 0.0995, 0.0995)),
        ('artifact', (0.5005, 0.5005, 0.5995, 0.5995)),
    ])  # fmt: skip
    assert report.dropped == {'label': 1} and report.artifacts is True


# ---------------------------------------------------------------------------------------------------------------------
# Yes / No and pixel counts
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'text, answer',
    [
        ('Yes.', True),
        ('no', False),
        ('**No.** The image looks clean: no halos or banding.', False),
        ('\n  Answer: YES - there is ringing around the window frame.', True),
        ('No, there are no visible synthesis artifacts.', False),
    ],
)
def test_yes_no_only(text, answer):
    report = parse_reply(text, SENT)
    assert report.artifacts is answer and report.regions == [] and report.fractions == {}
    assert report.format == 'yes_no' and report.converted == {'yes_no': 1}
    assert not report_to_maps(report, 8, 12).any()


@pytest.mark.parametrize('text', ['No JSON today', 'Nothing to see here.', 'Yesterday the sky was clipped.'])
def test_yes_no_needs_a_separate_word(text):
    assert parse_yes_no(text) is None
    with pytest.raises(VLMParseError) as err:
        parse_reply(text, SENT)
    assert err.value.reason == 'invalid_json'


def test_yes_no_line_before_json():
    body = json.dumps({'regions': [{'label': 'artifact', 'box': [0, 0, 0.5, 0.5]},
                                   {'label': 'overexposed', 'box': [0.5, 0, 1, 0.5]}]})  # fmt: skip
    report = parse_reply(f'No.\n```json\n{body}\n```', SENT)
    assert report.format == 'yes_no+json' and report.artifacts is False
    assert boxes(report) == [('overexposed', (0.5, 0.0, 1.0, 0.5))] and report.dropped == {'artifacts_false': 1}
    explicit = parse_reply('No.\n{"artifacts": true, "regions": []}', SENT)
    assert explicit.artifacts is True  # the JSON answer takes precedence over the first line


def test_pixel_counts_after_yes_use_the_artifact_total():
    text = (
        'Yes.\nArtifact pixels (pink): [1200, 50176]\nOver-exposed (blue) and under-exposed (green) pixels: [300, 800]'
    )
    report = parse_reply(text, (224, 224))
    assert report.format == 'yes_no+pixel_counts' and report.artifacts is True and report.regions == []
    expected = {'artifact': 1200 / 50176, 'overexposed': 300 / 50176, 'underexposed': 800 / 50176}
    assert report.fractions == pytest.approx(expected)
    maps = report_to_maps(report, 16, 24)
    np.testing.assert_allclose(map_fractions(maps), [expected[k] for k in ('artifact', 'overexposed', 'underexposed')],
                               rtol=1e-5)  # fmt: skip
    assert maps[1].min() == maps[1].max()  # no location: spread uniformly


def test_pixel_counts_positional_and_the_sent_image_total():
    report = parse_reply('Yes. [1200, 50176] ... [300, 800]', SENT)  # unlabelled: the paper's order
    assert report.fractions == pytest.approx({'artifact': 1200 / 50176, 'overexposed': 300 / 50176,
                                              'underexposed': 800 / 50176})  # fmt: skip
    lone = parse_reply('No.\n[39321, 9830]', SENT)  # a lone pair after No: [over, under] of the sent image
    assert lone.artifacts is False and lone.format == 'yes_no+pixel_counts'
    assert lone.fractions == pytest.approx({'overexposed': 39321 / (768 * 512), 'underexposed': 9830 / (768 * 512)})
    np.testing.assert_allclose(map_fractions(report_to_maps(lone, 32, 48)), [0.0, 0.1, 0.025], atol=1e-4)


def test_pixel_counts_labels_override_the_order_and_bad_pairs_are_dropped():
    text = 'Over/under-exposed pixel counts: [1000, 0]. Artifact pixel count and total: [0, 10000]. Also [5, 6].'
    report = parse_reply(text, SENT)
    assert report.format == 'pixel_counts' and report.converted == {'pixel_counts': 3}
    assert report.fractions == pytest.approx({'artifact': 0.0, 'overexposed': 0.1, 'underexposed': 0.0})
    assert report.artifacts is False  # inferred: no artifact pixels
    assert report.dropped == {'pixel_counts': 1}  # the third pair has no role left
    bad = parse_reply('Yes. [70000, 50176] [10, 20]', (100, 100))  # more artifact pixels than in total
    assert 'artifact' not in bad.fractions and bad.dropped == {'pixel_counts': 1}
    assert bad.fractions == pytest.approx({'overexposed': 0.001, 'underexposed': 0.002})  # the sent image's total


def test_boxes_take_precedence_over_fractions_and_old_dicts_load():
    report = VLMReport(True, [VLMRegion('overexposed', (0.0, 0.0, 0.5, 1.0), 1.0)],
                       fractions={'overexposed': 0.9, 'underexposed': 0.25})  # fmt: skip
    np.testing.assert_allclose(map_fractions(report_to_maps(report, 8, 16, soft_edge=0.0)), [0.0, 0.5, 0.25], atol=1e-6)
    again = VLMReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.fractions == report.fractions and again.regions == report.regions
    old = {'artifacts': False, 'regions': [{'label': 'artifact', 'box': [0, 0, 1, 1], 'confidence': 1.0}],
           'dropped': {}, 'rescaled': 0, 'image_size': [16, 8], 'raw_text': '{}'}  # fmt: skip
    loaded = VLMReport.from_dict(old)
    assert loaded.fractions == {} and loaded.format == '' and loaded.converted == {}


# ---------------------------------------------------------------------------------------------------------------------
# Labels and failures
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'label, expected',
    [
        ('overexposed region', 'overexposed'),
        ('Blown-out highlights', 'overexposed'),
        ('clipped sky', 'overexposed'),
        ('over-bright window', 'overexposed'),
        ('dark shadows', 'underexposed'),
        ('underexposed area', 'underexposed'),
        ('clipped shadows', 'underexposed'),
        ('halo', 'artifact'),
        ('banding', 'artifact'),
        ('artifacts region', 'artifact'),
        ('noise in the dark corner', 'artifact'),  # artifact words come first
        ('"Over-Exposure."', 'overexposed'),  # exact alias after stripping punctuation
        ('sky', None),
        ('lens flare', None),
        ('overexposed and underexposed', None),  # both named: ambiguous
        ('bright highlights and dark shadows', None),
    ],
)
def test_label_phrasings(label, expected):
    assert normalise_label(label) == expected


@pytest.mark.parametrize(
    'text, reason',
    [
        ('I am sorry, but I cannot determine that from the image.', 'invalid_json'),
        ('```json\n{"verdict": "looks fine"}\n```', 'schema'),
        ('[1, 2', 'invalid_json'),
    ],
)
def test_replies_without_a_known_form_still_fail(text, reason):
    with pytest.raises(VLMParseError) as err:
        parse_reply(text, SENT)
    assert err.value.reason == reason


# ---------------------------------------------------------------------------------------------------------------------
# Client details
# ---------------------------------------------------------------------------------------------------------------------


def test_http_error_message_carries_the_response_body():
    image = np.full((8, 8, 3), 0.5, np.float32)
    body = b'{"error": {"message": "CUDA out of memory. Tried to allocate 2.00 GiB", "code": 500}}' + b'x' * 1000
    with StubVLMServer() as stub:
        stub.push(Reply(status=500, raw=body), Reply(status=404, raw=b'model \xff"nope" not found\n'))
        client = VLMClient(stub.url + '/v1', 'stub-model', retries=0, timeout=5.0)
        result = client.ask_detailed(image)
        assert result.reason == 'http_500'
        prefix = f'HTTP 500 from {stub.url}/v1/chat/completions: '
        assert result.message.startswith(prefix + '{"error": {"message": "CUDA out of memory.')
        assert len(result.message) == len(prefix) + 300  # the first 300 characters of the body
        result = client.ask_detailed(image)
        assert result.reason == 'http_404' and result.message.endswith(': model \ufffd"nope" not found')


def test_model_may_be_omitted_and_max_tokens_defaults_to_384(tmp_path):
    image = np.full((8, 8, 3), 0.5, np.float32)
    with StubVLMServer(default=regions_reply(('overexposed', [0, 0, 1, 1], 1.0))) as stub:
        for model in (None, ''):
            assert VLMClient(stub.url + '/v1', model).ask(image) is not None
        named = VLMClient(stub.url, 'served/path', dialect='ollama')
        assert named.ask(image) is not None
        first, second, ollama = (r.body for r in stub.chat_requests)
        assert 'model' not in first and 'model' not in second and first['max_tokens'] == 384
        assert ollama['model'] == 'served/path' and ollama['options']['num_predict'] == 384

        write_ldr(str(tmp_path / 'a.png'), np.full((6, 10, 3), 0.5))
        args = ['-i', str(tmp_path / 'a.png'), '--cache', str(tmp_path / 'cache'), '--base-url', stub.url + '/v1',
                '--timeout', '5', '--no-progress']  # fmt: skip
        assert perceive.main(args) == 0  # no --model
        assert 'model' not in stub.chat_requests[-1].body
    with pytest.raises(ValueError, match='ollama'):
        VLMClient('http://127.0.0.1:9', None, dialect='ollama')
