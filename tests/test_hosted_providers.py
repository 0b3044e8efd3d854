"""The hosted providers as plain data: the request each job sends, what each answer holds, how
each error is classified, how sizes map, and what is refused at submit. No I/O: the worker's own
tests (test_hosted_worker.py) send these requests to the fake servers."""

import base64

import pytest
from diffdeck.engines.core.flows import Lora, Stage
from diffdeck.engines.core.spec import JobSpec, ModelSpec, SpecError
from diffdeck.engines.hosted.providers import ProviderError, provider

PNG = b"\x89PNG\r\n\x1a\n-not-decoded-here"
B64 = base64.b64encode(PNG).decode()


def model(kind: str, source: str, **fields) -> ModelSpec:
    return ModelSpec(name="m", source=source, kind=kind, api_key_env="THE_KEY", **fields)


def job(**fields) -> JobSpec:
    filled = {"prompt": "a red cube", "model": "m", "width": 1024, "height": 1024, "seeds": (11, 12, 13),
              "seed": 11, "count": 3, **fields}
    return JobSpec(**filled)


# Requests, exactly as each API documents them

def test_ideogram_sends_each_images_own_seed_its_options_and_negative_prompt():
    ideo = model("ideogram", "V_2_TURBO", options={"magic_prompt_option": "OFF", "style_type": "DESIGN"})
    call = provider("ideogram").request(ideo, job(negative_prompt="blur", width=1024, height=576), 2, 1, "k1")
    assert (call.method, call.path, call.headers) == ("POST", "/generate", {"Api-Key": "k1"})
    assert call.json == {"image_request": {
        "prompt": "a red cube", "model": "V_2_TURBO", "aspect_ratio": "ASPECT_16_9", "magic_prompt_option": "OFF",
        "style_type": "DESIGN", "negative_prompt": "blur", "num_images": 1, "seed": 13}}


def test_imagen_asks_for_several_samples_in_one_request():
    imagen = model("imagen", "imagen-4.0-generate-001", options={"personGeneration": "dont_allow"})
    call = provider("imagen").request(imagen, job(width=768, height=1024), 0, 3, "k2")
    assert (call.path, call.headers) == ("/v1beta/models/imagen-4.0-generate-001:predict", {"x-goog-api-key": "k2"})
    assert call.json == {"instances": [{"prompt": "a red cube"}],
                         "parameters": {"sampleCount": 3, "aspectRatio": "3:4", "personGeneration": "dont_allow",
                                        "includeRaiReason": True}}
    assert provider("imagen").images_per_call(imagen) == 4


def test_gemini_asks_for_an_image_only_at_an_aspect_ratio():
    gemini = model("gemini", "gemini-2.5-flash-image")
    call = provider("gemini").request(gemini, job(width=1344, height=576), 1, 1, "k3")
    assert (call.path, call.headers) == ("/v1beta/models/gemini-2.5-flash-image:generateContent",
                                         {"x-goog-api-key": "k3"})
    assert call.json == {"contents": [{"parts": [{"text": "a red cube"}]}],
                         "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "21:9"}}}
    assert provider("gemini").images_per_call(gemini) == 1


def test_gpt_image_1_sends_size_quality_and_count_and_never_a_response_format():
    gpt = model("openai", "gpt-image-1")
    call = provider("openai").request(gpt, job(width=1536, height=1024), 0, 3, "k4")
    assert (call.path, call.headers) == ("/v1/images/generations", {"Authorization": "Bearer k4"})
    assert call.json == {"model": "gpt-image-1", "prompt": "a red cube", "n": 3, "size": "1536x1024", "quality": "auto"}
    assert provider("openai").images_per_call(gpt) == 10


def test_dall_e_3_renders_one_image_a_request_in_base64_with_its_own_options():
    dalle = model("openai", "dall-e-3", options={"quality": "hd", "style": "natural"})
    call = provider("openai").request(dalle, job(width=1024, height=1792), 1, 1, "k5")
    assert call.json == {"model": "dall-e-3", "prompt": "a red cube", "n": 1, "size": "1024x1792", "quality": "hd",
                         "style": "natural", "response_format": "b64_json"}
    assert provider("openai").images_per_call(dalle) == 1


def test_only_ideogram_is_seeded():
    assert [k for k in ("ideogram", "imagen", "gemini", "openai") if provider(k).seeded] == ["ideogram"]
    assert provider("ideogram").max_seed == 2**31 - 1


# Sizes

@pytest.mark.parametrize(("kind", "source", "size", "fields", "pixels"), [
    ("ideogram", "V_2", (1024, 1024), {"aspect_ratio": "ASPECT_1_1"}, (None, None)),
    ("ideogram", "V_2", (1536, 512), {"aspect_ratio": "ASPECT_3_1"}, (None, None)),
    ("ideogram", "V_2", (1280, 800), {"aspect_ratio": "ASPECT_16_10"}, (None, None)),
    ("imagen", "imagen-4.0-generate-001", (1024, 576), {"aspectRatio": "16:9"}, (1408, 768)),
    ("imagen", "imagen-4.0-generate-001", (512, 640), {"aspectRatio": "3:4"}, (896, 1280)),
    ("gemini", "gemini-2.5-flash-image", (800, 1000), {"aspectRatio": "4:5"}, (896, 1152)),
    ("openai", "gpt-image-1", (1024, 768), {"size": "1536x1024"}, (1536, 1024)),
    ("openai", "dall-e-3", (1024, 576), {"size": "1792x1024"}, (1792, 1024)),
    ("openai", "dall-e-3", (512, 512), {"size": "1024x1024"}, (1024, 1024)),
])
def test_a_size_maps_to_the_nearest_shape_the_provider_takes(kind, source, size, fields, pixels):
    sent = provider(kind).size(model(kind, source), *size)
    assert (sent.fields, (sent.width, sent.height)) == (fields, pixels)


@pytest.mark.parametrize(("kind", "source"), [("imagen", "imagen-4.0-generate-001"), ("openai", "gpt-image-1")])
def test_a_size_far_from_every_shape_is_refused_naming_them(kind, source):
    with pytest.raises(SpecError) as info:
        provider(kind).check(model(kind, source), job(width=2048, height=512))
    assert info.value.field == "size" and "2048x512" in info.value.message and "1:1" in info.value.message


# Answers

def test_an_ideogram_answer_gives_urls_to_fetch_and_the_unsafe_images_reasons():
    body = {"created": "2026-12-01T00:00:00Z", "data": [
        {"url": "http://x/1.png", "seed": 13, "prompt": "p", "resolution": "1024x1024", "is_image_safe": True},
        {"seed": 14, "prompt": "p", "resolution": "1024x1024", "is_image_safe": False}]}
    answer = provider("ideogram").answer(model("ideogram", "V_2"), body)
    assert [(p.data, p.url, p.seed) for p in answer.pictures] == [(None, "http://x/1.png", 13)]
    assert len(answer.reasons) == 1 and "unsafe" in answer.reasons[0]


def test_an_imagen_answer_decodes_its_images_and_keeps_the_filters_reasons():
    body = {"predictions": [{"bytesBase64Encoded": B64, "mimeType": "image/png"},
                            {"raiFilteredReason": "It may contain a public figure."}]}
    answer = provider("imagen").answer(model("imagen", "imagen-4.0-generate-001"), body)
    assert [p.data for p in answer.pictures] == [PNG] and answer.reasons == ("It may contain a public figure.",)


def test_a_gemini_answer_gives_its_image_parts_and_model_version():
    body = {"candidates": [{"content": {"parts": [{"text": "Here it is"},
                                                  {"inlineData": {"mimeType": "image/png", "data": B64}}]},
                            "finishReason": "STOP"}], "modelVersion": "gemini-2.5-flash-image"}
    answer = provider("gemini").answer(model("gemini", "gemini-2.5-flash-image"), body)
    assert [p.data for p in answer.pictures] == [PNG] and answer.version == "gemini-2.5-flash-image"


@pytest.mark.parametrize(("body", "says"), [
    ({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}, "PROHIBITED_CONTENT"),
    ({"candidates": [{"finishReason": "IMAGE_SAFETY", "finishMessage": "unsafe\x1b[31m image"}]}, "IMAGE_SAFETY"),
])
def test_a_gemini_refusal_inside_a_200_answer_is_a_refusal_with_its_reason(body, says):
    with pytest.raises(ProviderError) as info:
        provider("gemini").answer(model("gemini", "gemini-2.5-flash-image"), body)
    assert info.value.kind == "refused" and says in info.value.message and "\x1b" not in info.value.message


def test_a_gemini_answer_with_text_and_no_image_says_what_it_said():
    body = {"candidates": [{"content": {"parts": [{"text": "I can only\ndescribe it"}]}, "finishReason": "STOP"}]}
    with pytest.raises(ProviderError) as info:
        provider("gemini").answer(model("gemini", "gemini-2.5-flash-image"), body)
    assert info.value.kind == "provider" and "I can only describe it" in info.value.message


HOSTILE = "\x1b]52;c;Zm9v\x07\x1b[2J" + "x" * 1000  # sets the clipboard, clears the screen, floods the line


@pytest.mark.parametrize(("body", "kind"), [
    ({"promptFeedback": {"blockReason": HOSTILE}}, "refused"),
    ({"candidates": [{"finishReason": "SAFETY", "finishMessage": HOSTILE}]}, "refused"),
    ({"candidates": [{"finishReason": HOSTILE, "content": {"parts": [{"text": HOSTILE}]}}]}, "provider"),
    ({"promptFeedback": ["BLOCKED"], "candidates": [{"content": {"parts": []}}]}, "provider"),
    ({"candidates": [{"finishReason": "STOP", "content": "an image, honest"}]}, "provider"),
    ({"candidates": [{"content": {"parts": "not a list"}}]}, "provider"),
    ({"candidates": []}, "provider"),
])
def test_a_hostile_gemini_answer_fails_as_the_providers_in_one_short_clean_line(body, kind):
    with pytest.raises(ProviderError) as info:
        provider("gemini").answer(model("gemini", "gemini-2.5-flash-image"), body)
    assert info.value.kind == kind
    assert info.value.message.isprintable() and len(info.value.message) < 400, info.value.message


def test_an_openai_answer_decodes_base64_images():
    answer = provider("openai").answer(model("openai", "gpt-image-1"), {"created": 1, "data": [{"b64_json": B64}] * 2})
    assert [p.data for p in answer.pictures] == [PNG, PNG]


def test_an_answer_of_bad_base64_is_the_providers_fault():
    with pytest.raises(ProviderError) as info:
        provider("openai").answer(model("openai", "gpt-image-1"), {"data": [{"b64_json": "not base64!"}]})
    assert info.value.kind == "provider" and "decodes" in info.value.message


# Errors

def openai_error(message, code=None):
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


def google_error(code, message, status, *details):
    return {"error": {"code": code, "message": message, "status": status, "details": list(details)}}


def quota_failure(quota_id):
    return {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": quota_id}]}


@pytest.mark.parametrize(("kind", "status", "body", "error_kind", "retryable"), [
    ("openai", 401, openai_error("Incorrect API key provided"), "key", False),
    ("imagen", 400, google_error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT"),
     "key", False),
    ("gemini", 403, google_error(403, "Permission denied", "PERMISSION_DENIED"), "key", False),
    ("ideogram", 402, {"detail": "Payment required"}, "quota", False),
    ("openai", 429, openai_error("You exceeded your current quota", "insufficient_quota"), "quota", False),
    ("openai", 400, openai_error("Billing hard limit has been reached", "billing_hard_limit_reached"), "quota", False),
    ("imagen", 429, google_error(429, "You exceeded your current quota.", "RESOURCE_EXHAUSTED",
                                 quota_failure("PredictRequestsPerDayPerProjectPerModel")), "quota", False),
    # a rate limit, whatever its words say
    ("imagen", 429, google_error(429, "You exceeded your current quota.", "RESOURCE_EXHAUSTED",
                                 quota_failure("PredictRequestsPerMinutePerProjectPerModel")), "provider", True),
    ("openai", 429, openai_error("Rate limit reached. Add a payment method at .../account/billing",
                                 "rate_limit_exceeded"), "provider", True),
    ("ideogram", 429, {"detail": "Too many requests: see billing for a higher quota"}, "provider", True),
    ("gemini", 429, google_error(429, "Too many requests", "RESOURCE_EXHAUSTED"), "provider", True),
    ("openai", 503, "upstream connect error", "provider", True),
    ("ideogram", 500, {"detail": "Internal error"}, "provider", True),
    ("openai", 400, openai_error("Your request was rejected by the safety system", "content_policy_violation"),
     "refused", False),
    ("openai", 400, openai_error("blocked", "moderation_blocked"), "refused", False),
    ("ideogram", 422, {"error": "Prompt failed the safety check"}, "refused", False),
    ("ideogram", 422, {"error": "a kitten in a bikini"}, "refused", False),
    ("openai", 400, openai_error("Invalid size '999x999'", "invalid_value"), "unsupported", False),
    ("imagen", 404, google_error(404, "models/imagen-9 is not found", "NOT_FOUND"), "unsupported", False),
])
def test_each_error_answer_is_classified(kind, status, body, error_kind, retryable):
    source = {"ideogram": "V_2", "imagen": "imagen-4.0-generate-001", "gemini": "gemini-2.5-flash-image",
              "openai": "gpt-image-1"}[kind]
    error = provider(kind).error(model(kind, source), status, body)
    assert (error.kind, error.retryable) == (error_kind, retryable)
    assert error.message.startswith(kind) and "'m'" in error.message and source in error.message


def test_a_refused_key_names_its_variable_and_what_the_provider_said_is_one_clean_short_line():
    said = "bad key\n\x1b]52;c;Zm9v\x07" + "x" * 1000
    error = provider("openai").error(model("openai", "gpt-image-1"), 401, openai_error(said))
    assert "$THE_KEY" in error.message and "bad key" in error.message
    assert "\n" not in error.message and "\x1b" not in error.message and "\x07" not in error.message
    assert len(error.message) < 400


# Checks at submit

@pytest.mark.parametrize(("kind", "source", "fields", "field"), [
    ("imagen", "imagen-4.0-generate-001", {"negative_prompt": "blur"}, "negative_prompt"),
    ("ideogram", "V_1", {"negative_prompt": "blur"}, "negative_prompt"),
    ("openai", "gpt-image-1", {"loras": (Lora("a.safetensors"),)}, "loras"),
    ("gemini", "gemini-2.5-flash-image", {"flow": "hires", "stages": (Stage("txt2img"),)}, "flow"),
    ("ideogram", "V_2", {"init_image": "start.png"}, "init_image"),
    ("openai", "dall-e-3", {"scheduler": "euler"}, "scheduler"),
    ("ideogram", "V_2", {"seeds": (1, 2**31, 3)}, "seed"),
])
def test_what_a_provider_cannot_take_is_refused_at_submit(kind, source, fields, field):
    with pytest.raises(SpecError) as info:
        provider(kind).check(model(kind, source), job(**fields))
    assert info.value.field == field and source in info.value.message


PROVIDED = (("ideogram", "V_2A"), ("imagen", "imagen-4.0-fast-generate-001"), ("gemini", "gemini-2.5-flash-image"),
            ("openai", "dall-e-3"))


def test_what_a_provider_can_take_passes():
    for kind, source in PROVIDED:
        provider(kind).check(model(kind, source), job(seeds=(2**31 - 1, 0, 5)))


@pytest.mark.parametrize("field", ["steps", "guidance"])
def test_steps_and_guidance_are_refused_they_are_never_sent(field):
    for kind, source in PROVIDED:
        with pytest.raises(SpecError) as info:
            provider(kind).check(model(kind, source), job(**{field: 7}))
        assert info.value.field == field and "not sent" in info.value.message


@pytest.mark.parametrize(("kind", "source", "options", "field", "says"), [
    ("ideogram", "V_2", {"magic_prompt": "ON"}, "options.magic_prompt", "magic_prompt_option"),
    ("ideogram", "V_1", {"style_type": "DESIGN"}, "options.style_type", "its options: magic_prompt_option"),
    ("ideogram", "V_2", {"magic_prompt_option": False}, "options.magic_prompt_option", 'quote it in models.yaml: "OFF"'),
    ("openai", "gpt-image-1", {"quality": "hd"}, "options.quality", "low, medium, high, auto"),
    ("openai", "dall-e-3", {"background": "transparent"}, "options.background", "quality, style"),
    ("gemini", "gemini-2.5-flash-image", {"seed": 1}, "options.seed", "its options: none"),
    ("ideogram", "V_3", {}, "source", "V_2A_TURBO"),
    ("openai", "dall-e-2", {}, "source", "dall-e-3"),
])
def test_an_unknown_option_value_or_model_id_is_refused_naming_what_it_takes(kind, source, options, field, says):
    with pytest.raises(SpecError) as info:
        provider(kind).check(model(kind, source, options=options), job())
    assert info.value.field == field and says in info.value.message
