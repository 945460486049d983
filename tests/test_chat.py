"""Chat with the real model over real HTTP: SmolLM2-135M-Instruct served by Ray Serve, its
answers held against transformers' generate on the same prompt, the official OpenAI client,
and the playground page driven in headless Chromium.

One Serve app for the module: the imported SmolLM2 in fp32 (greedy answers then equal
transformers' token for token), no API key except where a test sets one in the page.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

URL = "http://127.0.0.1:8000"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def chat_service(ray_session, smollm2):
    from ray import serve

    from serve_apps.app import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    app = dict(
        checkpoint=str(smollm2[0]),
        model_name="smollm2",
        quantize="none",
        max_slots=4,
        max_context=512,
        max_tokens_limit=96,
        api_key_env="RAYGPT_UNSET",
    )
    serve.run(build_app(app), name="chat", route_prefix="/")
    client = httpx.Client(base_url=URL, timeout=180)
    yield client
    client.close()
    serve.shutdown()


def chat(client: httpx.Client, messages, **fields) -> dict:
    response = client.post("/v1/chat/completions", json={"messages": messages, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def stream_chat(client: httpx.Client, messages, **fields) -> list[dict]:
    body = {"messages": messages, "stream": True, **fields}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = [line[len("data: ") :] for line in response.iter_lines() if line]
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def reference_answer(smollm2, reference, messages, max_new_tokens: int) -> tuple[list[int], str]:
    """transformers' greedy answer to the same conversation, up to the end-of-turn token."""
    model, tokenizer = reference
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
    answer = out[0, len(ids) :].tolist()
    end = smollm2[3].stop_tokens
    cut = next((i for i, t in enumerate(answer) if t in end), len(answer))
    return ids, tokenizer.decode(answer[:cut])


def test_a_chat_answer_equals_transformers_and_ends_at_the_end_of_turn(
    chat_service, smollm2, reference
):
    prompt_ids, expected = reference_answer(smollm2, reference, QUESTION, 40)
    answer = chat(chat_service, QUESTION, temperature=0, max_tokens=40)
    (choice,) = answer["choices"]
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert choice["message"] == {"role": "assistant", "content": expected}
    assert "Paris" in expected and "<|im_end|>" not in expected
    assert choice["finish_reason"] == "stop"  # the template's <|im_end|> ended it
    usage = answer["usage"]
    assert usage["prompt_tokens"] == len(prompt_ids)
    completion = len(smollm2[3].encode(expected))
    assert usage["completion_tokens"] in (completion, completion + 1)  # + the end token
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_the_streamed_answer_is_the_same_text_with_usage(chat_service):
    whole = chat(chat_service, QUESTION, temperature=0, max_tokens=40)
    chunks = stream_chat(
        chat_service,
        QUESTION,
        temperature=0,
        max_tokens=40,
        stream_options={"include_usage": True},
    )
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert reasons[-1] == "stop" and set(reasons[:-1]) == {None}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_stop_strings_and_token_limits(chat_service):
    ask = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    full = chat(chat_service, ask, temperature=0, max_tokens=60)["choices"][0]["message"]
    assert "\n" in full["content"]
    stopped = chat(chat_service, ask, temperature=0, max_tokens=60, stop=["\n"])["choices"][0]
    assert stopped["finish_reason"] == "stop"
    assert stopped["message"]["content"] == full["content"].split("\n")[0]
    short = chat(chat_service, ask, temperature=0, max_completion_tokens=5)
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"]["completion_tokens"] == 5
    assert full["content"].startswith(short["choices"][0]["message"]["content"])


def test_a_system_message_and_a_multi_turn_conversation(chat_service, smollm2, reference):
    conversation = [
        {"role": "system", "content": "You are a terse assistant. Answer with code only."},
        {"role": "user", "content": "Add two numbers in Python."},
        {"role": "assistant", "content": "a + b"},
        {"role": "user", "content": [{"type": "text", "text": "Now multiply them."}]},
    ]
    plain = [
        {**m, "content": "Now multiply them."} if i == 3 else m for i, m in enumerate(conversation)
    ]
    _, expected = reference_answer(smollm2, reference, plain, 24)
    answer = chat(chat_service, conversation, temperature=0, max_tokens=24)
    assert answer["choices"][0]["message"]["content"] == expected


BAD_CHATS = [
    ({"messages": []}, "at least one message"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role: 'robot'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "only text parts"),
    ({"messages": QUESTION, "n": 3}, "n=1"),
    ({"messages": QUESTION, "max_tokens": 500}, "limit of 96"),
    ({"messages": QUESTION, "tools": [{"type": "function"}]}, "tools"),
]


@pytest.mark.parametrize(("body", "words"), BAD_CHATS)
def test_bad_chat_requests_are_400_naming_the_field(chat_service, body, words):
    response = chat_service.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]["message"]


def test_chat_and_completion_requests_batched_together_each_equal_alone(chat_service):
    """The same engine runs both kinds: sent at once they share decode steps, and each
    answer is what it is alone."""
    jobs = [
        ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": 24}),
        ("/v1/completions", {"prompt": "def fibonacci(n):\n", "max_tokens": 32}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Say hi."}]}),
        ("/v1/completions", {"prompt": "import json\n\n", "max_tokens": 20}),
    ]

    def text(job) -> str:
        path, body = job
        response = chat_service.post(path, json={**body, "temperature": 0, "max_tokens": 24})
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        return choice["message"]["content"] if "message" in choice else choice["text"]

    alone = [text(job) for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(text, jobs))
    assert together == alone
    assert chat_service.get("/health").json()["engine"]["requests_failed"] == 0


def test_the_openai_client_chats_plain_and_streaming(chat_service):
    from openai import OpenAI

    client = OpenAI(base_url=f"{URL}/v1", api_key="unused")
    answer = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=40
    )
    assert answer.choices[0].message.role == "assistant"
    assert "Paris" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens > 0
    streamed = client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_the_playground_streams_chat_and_code_in_a_real_browser(chat_service, tmp_path):
    """Headless Chromium (Debian's package; CI installs it) opens /playground, sends a chat
    message and asks for a code completion; both stream into the page."""
    if not CHROMIUM.is_file():
        if os.environ.get("RAYGPT_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    assert chat_service.get("/playground").headers["content-type"].startswith("text/html")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.route(
            "**/*", lambda r: r.abort() if not r.request.url.startswith(URL) else r.continue_()
        )
        page.goto(f"{URL}/playground")
        expect(page.locator("#model-info")).to_contain_text("smollm2")
        expect(page.locator("#limits")).to_contain_text("96")
        page.locator("#temperature").evaluate(  # a range input: set it as a user's drag does
            "e => { e.value = '0'; e.dispatchEvent(new Event('input')); }"
        )
        page.fill("#chat-input", QUESTION[0]["content"])
        page.click("#chat-send")
        answer = page.locator("#chat-log .msg.assistant").last
        expect(answer).to_contain_text("Paris", timeout=60_000)
        expect(page.locator("#status")).to_contain_text("finish: stop", timeout=60_000)
        page.screenshot(path=str(tmp_path / "chat.png"))

        page.click("#tab-code")
        page.locator("#code-editor").fill("def add(a, b):\n")
        page.fill("#max-tokens", "16")
        page.click("#code-complete")
        expect(page.locator("#status")).to_contain_text("finish: length", timeout=60_000)
        generated = page.locator("#code-editor .generated").inner_text()
        assert generated.strip()
        page.screenshot(path=str(tmp_path / "code.png"))
        browser.close()
    shots = os.environ.get("RAYGPT_SCREENSHOTS")  # to refresh docs/: RAYGPT_SCREENSHOTS=docs
    for name in ("chat.png", "code.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if shots:
            shutil.copy(tmp_path / name, Path(shots) / f"playground_{name}")


def test_humaneval_through_the_engine_and_through_the_service_agree(chat_service, smollm2):
    """The same model, prompted the same way (its chat template), greedy: the Ray actors'
    engine and the running service write the same answers and score the same pass@1."""
    from raygpt.release.code_eval import CodeEvalOptions, EngineSource, ServiceSource, run_code_eval

    options = CodeEvalOptions(limit=2, max_tokens=64)
    engine = run_code_eval(EngineSource(str(smollm2[0]), max_context=512), options)
    service = run_code_eval(ServiceSource(URL, "smollm2"), options)
    assert engine.mode == service.mode == "chat"
    answers = [[s.text for s in p.samples] for p in engine.problems]
    assert answers == [[s.text for s in p.samples] for p in service.problems]
    assert all(a[0] for a in answers)  # it answered every problem
    assert engine.pass_at(1) == service.pass_at(1)
    assert sum(engine.outcomes().values()) == 2
