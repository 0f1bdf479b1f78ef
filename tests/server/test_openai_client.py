"""orchard-server driven by the official `openai` Python client (started by run.sh)."""
import json
import math
import os

import jsonschema
import openai
import pytest

BASE = os.environ["ORCHARD_BASE_URL"]
KEY = os.environ["ORCHARD_API_KEY"]
MODEL = os.environ.get("ORCHARD_MODEL", "smol")


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120)


def msgs(text):
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text}]


def test_models_lists_the_alias(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL]


def test_chat_plain(client):
    r = client.chat.completions.create(model=MODEL, messages=msgs("What is the capital of France?"),
                                       max_tokens=16, temperature=0)
    assert r.object == "chat.completion"
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert "Paris" in c.message.content
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10
    assert 0 < r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_matches_plain(client):
    kw = dict(model=MODEL, messages=msgs("Name three fruits."), max_tokens=20, temperature=0)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    text, finish, usage = "", None, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert text == plain
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert len(r.choices[0].text) > 0
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8


def test_completions_stream(client):
    text = ""
    finish = None
    for chunk in client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=8,
                                           temperature=0, stream=True):
        for ch in chunk.choices:
            text += ch.text
            finish = ch.finish_reason or finish
    assert len(text) > 0 and finish == "length"


def test_embeddings(client):
    r = client.embeddings.create(model=MODEL, input=["hello world", "good morning", "quantum physics"])
    assert [d.index for d in r.data] == [0, 1, 2]
    dims = {len(d.embedding) for d in r.data}
    assert dims == {576}
    for d in r.data:
        assert abs(math.sqrt(sum(x * x for x in d.embedding)) - 1.0) < 1e-3
    assert r.usage.prompt_tokens > 3


def test_n_choices(client):
    r = client.chat.completions.create(model=MODEL, messages=msgs("Tell me a word."), max_tokens=6,
                                       n=3, temperature=1.0, seed=7)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert all(c.message.content is not None for c in r.choices)
    assert 3 <= r.usage.completion_tokens <= 18


def test_stop_sequence(client):
    r = client.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=30, temperature=0,
                                  stop=[" 9", "\n"])
    c = r.choices[0]
    assert " 9" not in c.text and "\n" not in c.text
    assert c.finish_reason == "stop"


def test_json_schema_output_validates(client):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer"},
            "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
            "kind": {"enum": ["human", "robot"]},
        },
        "required": ["name", "age", "kind"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=MODEL, messages=msgs("Describe a person as JSON."), max_tokens=120, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    data = json.loads(r.choices[0].message.content)
    jsonschema.validate(data, schema)


def test_json_object_output_parses(client):
    r = client.chat.completions.create(model=MODEL, messages=msgs("Give me a short JSON object about a cat."),
                                       max_tokens=400, temperature=0, response_format={"type": "json_object"},
                                       # SmolLM2-135M loops on repeated keys without a small penalty.
                                       extra_body={"repeat_penalty": 1.1})
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_embeddings_as_floats(client):
    r = client.embeddings.create(model=MODEL, input="hello", encoding_format="float")
    assert len(r.data[0].embedding) == 576


def test_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=msgs("Hi"), max_tokens=4, temperature=0,
                                       logprobs=True, top_logprobs=3)
    toks = r.choices[0].logprobs.content
    assert len(toks) == 4
    assert "".join(t.token for t in toks) == r.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in toks)


def test_bad_temperature_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=msgs("x"), temperature=-3)
    assert e.value.status_code == 400
    assert e.value.body["type"] == "invalid_request_error"
    assert e.value.body["param"] == "temperature"


def test_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=msgs("x"), max_tokens=2)


def test_wrong_key_is_a_401():
    bad = openai.OpenAI(base_url=BASE + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model=MODEL, messages=msgs("x"), max_tokens=2)
    assert e.value.body["type"] == "authentication_error"


def test_context_overflow_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=msgs("hello " * 3000), max_tokens=2)
    assert e.value.code == "context_length_exceeded"


def test_bad_max_tokens_is_a_400(client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)


def test_responses_api(client):
    r = client.responses.create(model=MODEL, input=[{"role": "user", "content": "Name a fruit."}],
                                max_output_tokens=8, temperature=0)
    assert r.id.startswith("resp_")
    assert r.output[0].id.startswith("msg_")
    assert len(r.output_text) > 0
    assert r.usage.output_tokens <= 8


def test_responses_api_stream(client):
    text, final = "", None
    for ev in client.responses.create(model=MODEL, input="Name a color.", max_output_tokens=8,
                                      temperature=0, stream=True):
        if ev.type == "response.output_text.delta":
            text += ev.delta
        if ev.type == "response.completed":
            final = ev.response
    assert final is not None and final.output_text == text and len(text) > 0


def test_anthropic_messages_endpoint():
    import urllib.request
    req = urllib.request.Request(
        BASE + "/v1/messages",
        data=json.dumps({"model": MODEL, "max_tokens": 8,
                         "messages": [{"role": "user", "content": "Say hello"}]}).encode(),
        headers={"Content-Type": "application/json", "x-api-key": KEY})
    body = json.load(urllib.request.urlopen(req, timeout=120))
    assert body["type"] == "message" and body["content"][0]["type"] == "text"
    assert body["usage"]["output_tokens"] > 0


WEATHER_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_tool_call_required(client):
    r = client.chat.completions.create(model=MODEL, messages=msgs("What is the weather in Paris?"),
                                       tools=WEATHER_TOOLS, tool_choice="required",
                                       max_tokens=64, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert len(c.message.tool_calls) == 1
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_tool_call_streamed(client):
    calls = {}
    finish = None
    for chunk in client.chat.completions.create(model=MODEL, messages=msgs("What is the weather in Rome?"),
                                                tools=WEATHER_TOOLS, tool_choice="required",
                                                max_tokens=64, temperature=0, stream=True):
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        for tc in ch.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            if tc.function.name:
                slot["name"] += tc.function.name
            if tc.function.arguments:
                slot["arguments"] += tc.function.arguments
        finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather"
    assert isinstance(json.loads(calls[0]["arguments"])["city"], str)
