"""The fake providers themselves (tests/fake_providers.py), through httpx as a client sees them: a
fake that took any request would let every hosted test pass against a worker that sends nonsense."""

from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
from fake_providers import FakeProvider, ok, refuse, slow, status
from PIL import Image

KEY = "test-key"
# kind -> (path, the key header, a valid body, the same body with a field the provider does not know)
CALLS = {
    "openai": ("/v1/images/generations", "Authorization", f"Bearer {KEY}",
               {"model": "gpt-image-1", "prompt": "a red circle", "n": 1, "size": "1536x1024", "quality": "low"},
               {"model": "gpt-image-1", "prompt": "a red circle", "seed": 7}),
    "imagen": ("/v1beta/models/imagen-4.0-fast-generate-001:predict", "x-goog-api-key", KEY,
               {"instances": [{"prompt": "a red circle"}], "parameters": {"sampleCount": 1, "aspectRatio": "16:9"}},
               {"instances": [{"prompt": "a red circle"}], "parameters": {"sampleCount": 1, "seed": 7}}),
    "gemini": ("/v1beta/models/gemini-2.5-flash-image:generateContent", "x-goog-api-key", KEY,
               {"contents": [{"parts": [{"text": "a red circle"}]}],
                "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "16:9"}}},
               {"contents": [{"parts": [{"text": "a red circle"}]}], "generationConfig": {"aspect_ratio": "16:9"}}),
    "ideogram": ("/generate", "Api-Key", KEY,
                 {"image_request": {"prompt": "a red circle", "model": "V_2_TURBO", "aspect_ratio": "ASPECT_16_9",
                                    "seed": 7}},
                 {"image_request": {"prompt": "a red circle", "model": "V_2_TURBO", "steps": 4}}),
}
SIZES = {"openai": (1536, 1024), "imagen": (1408, 768), "gemini": (1344, 768), "ideogram": (1312, 736)}


def post(fake: FakeProvider, key: str | None = KEY, body: dict | None = None, **options) -> httpx.Response:
    path, header, value, valid, _ = CALLS[fake.kind.name]
    headers = {} if key is None else {header: value.replace(KEY, key)}
    return httpx.post(fake.base_url + path, headers=headers, json=valid if body is None else body, **options)


def pictures(fake: FakeProvider, answer: dict) -> list[Image.Image]:
    """The images of an answer, downloaded where it gives URLs, decoded."""
    if fake.kind.name == "openai":
        blobs = [base64.b64decode(item["b64_json"]) for item in answer["data"]]
    elif fake.kind.name == "imagen":
        blobs = [base64.b64decode(item["bytesBase64Encoded"]) for item in answer["predictions"]]
    elif fake.kind.name == "gemini":
        blobs = [base64.b64decode(part["inlineData"]["data"]) for part in answer["candidates"][0]["content"]["parts"]]
    else:
        blobs = [httpx.get(item["url"]).content for item in answer["data"]]
    return [Image.open(io.BytesIO(blob)) for blob in blobs]


@pytest.mark.parametrize("kind", CALLS)
def test_each_fake_answers_a_valid_request_with_images_of_the_providers_size(kind):
    with FakeProvider(kind, key=KEY) as fake:
        answer = post(fake)
        assert answer.status_code == 200, answer.text
        [image] = pictures(fake, answer.json())
        assert image.size == SIZES[kind]
        assert len({image.getpixel((x, 0)) for x in range(0, image.width, 64)}) > 1  # drawn, not blank
        assert fake.requests()[0].json == CALLS[kind][3]


@pytest.mark.parametrize("kind", CALLS)
def test_a_wrong_key_and_an_unknown_field_are_refused_in_the_providers_shape(kind):
    with FakeProvider(kind, key=KEY) as fake:
        wrong_key, missing_key, unknown = post(fake, key="nope"), post(fake, key=None), post(fake, body=CALLS[kind][4])
    if kind in ("imagen", "gemini"):  # Google answers a wrong key 400 API_KEY_INVALID, no key 403
        assert wrong_key.status_code == 400
        assert wrong_key.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        assert missing_key.status_code == 403 and missing_key.json()["error"]["status"] == "PERMISSION_DENIED"
        assert unknown.status_code == 400 and unknown.json()["error"]["status"] == "INVALID_ARGUMENT"
    else:
        assert wrong_key.status_code == missing_key.status_code == 401
        assert unknown.status_code == 400
    if kind == "openai":
        assert wrong_key.json()["error"]["code"] == "invalid_api_key"
        assert unknown.json()["error"] == {"message": "Unknown parameter: 'seed'.", "type": "invalid_request_error",
                                           "param": "seed", "code": "unknown_parameter"}
    assert ("seed" if kind in ("openai", "imagen") else "aspect_ratio" if kind == "gemini" else "steps") in unknown.text
    assert len(fake.seen) == 3 and not fake.dropped


def test_ideogram_urls_expire_once_fetched_or_when_their_time_is_up_and_seeds_repeat():
    with FakeProvider("ideogram", key=KEY) as fake:
        first, second = post(fake).json()["data"][0], post(fake).json()["data"][0]
        assert first["seed"] == second["seed"] == 7 and first["resolution"] == "1312x736"
        assert httpx.get(first["url"]).content == httpx.get(second["url"]).content  # same seed, same pixels
        assert httpx.get(first["url"]).status_code == 410  # fetched once already
        assert "api-key" not in fake.seen[-1].headers
    with FakeProvider("ideogram", key=KEY, url_lifetime_s=0.2) as fake:
        url = post(fake).json()["data"][0]["url"]
        time.sleep(0.3)
        assert httpx.get(url).status_code == 410


def test_behaviours_come_in_order_then_ok_and_a_client_gone_while_slow_is_recorded_dropped():
    with FakeProvider("openai", key=KEY) as fake:
        fake.then(status(429, retry_after=2), refuse("no ducks"), slow(5), ok(images=0))
        limited = post(fake)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "2"
        refused = post(fake)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "moderation_blocked"
        assert refused.json()["error"]["message"] == "no ducks"
        start = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            post(fake, timeout=0.3)
        assert time.monotonic() - start < 2
        time.sleep(0.2)
        assert fake.dropped == [fake.seen[2]]
        assert post(fake).json()["data"] == []
        assert len(post(fake).json()["data"]) == 1
