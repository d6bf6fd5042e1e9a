"""The web UI at /ui, driven in headless Chromium (Playwright) against the real `serve`.

Debian's chromium is the browser (`make chromium` installs it; Playwright cannot download its own
here). Screenshots of every test go to tests/artifacts/ui/ (gitignored), for people and CI to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Locator, Page, Playwright, Route, expect, sync_playwright

from .conftest import RunningServer, launch_serve
from .test_xinference_client import llm_registration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
LOAD_S = 180  # a model launch on a loaded 2-core machine
API_KEY = "ui-test-key"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Headless Debian chromium; missing, it fails the test (make test installs it) rather than skipping."""
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)"
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The tiny model as the default model "tiny"; the tests launch more next to it."""
    running = launch_serve(tiny_model, tmp_path_factory.mktemp("web-ui"), engine="transformers",
                           env={"BERTH_MODEL_UID": "tiny"})
    yield running
    running.stop()


def _open(browser: Browser, url: str, viewport: dict[str, int]) -> Page:
    page = browser.new_context(viewport=viewport).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.berth_errors = errors  # type: ignore[attr-defined]
    return page


@pytest.fixture
def page(browser: Browser, server: RunningServer, request: pytest.FixtureRequest) -> Iterator[Page]:
    """The UI at 1280x800; its screenshot is saved when the test ends, and no script error is allowed."""
    opened = _open(browser, server.url("/ui"), DESKTOP)
    expect(opened.get_by_role("table", name="Running models").get_by_role("rowheader", name="tiny")).to_be_visible()
    yield opened
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"))
    assert opened.berth_errors == []  # type: ignore[attr-defined]
    opened.context.close()


@pytest.fixture
def shoot(request: pytest.FixtureRequest) -> Callable[[Page, str], None]:
    """Save a screenshot named after the test and a step."""
    def save(target: Page, step: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        target.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{step}.png"))
    return save


def _model_row(page: Page, uid: str) -> Locator:
    table = page.get_by_role("table", name="Running models")
    return table.get_by_role("row").filter(has=page.get_by_role("rowheader", name=uid, exact=True))


def _watch_reply_lengths(page: Page) -> None:
    """Record every length the newest assistant reply's text takes while it streams."""
    page.evaluate("""() => {
        window.replyLengths = [];
        const log = document.getElementById("conversation");
        new MutationObserver(() => {
            const reply = [...log.querySelectorAll(".msg.assistant")].pop();
            const text = reply && reply.querySelector(":scope > .text");
            const length = text ? text.textContent.length : 0;
            if (length !== window.replyLengths.at(-1)) window.replyLengths.push(length);
        }).observe(log, {subtree: true, childList: true, characterData: true});
    }""")


def _set_chat_parameters(page: Page, model: str, temperature: str, max_tokens: str) -> None:
    page.get_by_role("combobox", name="Model", exact=True).select_option(model)
    page.locator("summary", has_text="Parameters").click()
    page.get_by_role("spinbutton", name="Temperature").fill(temperature)
    page.get_by_role("spinbutton", name="Max tokens").fill(max_tokens)


def _aborted(server: RunningServer, uid: str) -> float:
    text = httpx.get(server.url("/metrics"), timeout=30).text
    found = re.findall(rf'^berth_model_aborted_requests\{{model="{re.escape(uid)}",replica="\d+"\}} (\S+)$', text,
                       re.MULTILINE)
    return sum(float(value) for value in found)


def test_launch_chat_and_terminate_a_second_model(page: Page, server: RunningServer, tiny_model: Path,
                                                  shoot: Callable[[Page, str], None]) -> None:
    # Launch from the form: a built-in family served from the tiny model's directory.
    page.get_by_role("combobox", name="Model name").fill("llama-3.2-instruct")
    page.get_by_role("textbox", name="Model UID").fill("second")
    page.get_by_role("textbox", name="Model path").fill(str(tiny_model))
    page.get_by_role("combobox", name="Engine").fill("Transformers")
    page.evaluate("""() => {
        window.progressTexts = [];
        const bar = document.querySelector("[role=progressbar]");
        new MutationObserver(() => window.progressTexts.push(bar.getAttribute("aria-valuetext")))
            .observe(bar, {attributes: true, attributeFilter: ["aria-valuetext"]});
    }""")
    page.get_by_role("button", name="Launch", exact=True).click()
    bar = page.get_by_role("progressbar")
    expect(bar).to_be_visible()
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=LOAD_S * 1000)
    expect(bar).to_have_attribute("aria-valuetext", "second is ready")
    seen = page.evaluate("window.progressTexts")
    # The bar followed the server's states (from /v1/models/second and its /progress) until ready.
    assert any(re.match(r"second: (starting|downloading|loading)… \d+%", text) for text in seen), seen
    row = _model_row(page, "second")
    expect(row.get_by_text("ready")).to_be_visible()
    expect(row).to_contain_text("transformers")
    expect(row).to_contain_text("MiB")  # memory of the model's process, from /proc via GET /v1/models/second
    assert httpx.get(server.url("/v1/models/second"), timeout=30).json()["state"] == "ready"
    shoot(page, "launched")

    # Chat with it: the reply grows token by token and ends as the same stream read by the openai client.
    _set_chat_parameters(page, "second", "0", "48")
    _watch_reply_lengths(page)
    message = page.get_by_role("textbox", name="Message", exact=True)
    message.fill("What is the capital of France?")
    message.press("Enter")  # the keyboard path; the Send button is the same submit
    reply = page.get_by_role("log", name="Conversation").locator(".msg.assistant").last
    expect(reply).to_have_attribute("data-state", "done", timeout=120_000)
    lengths = page.evaluate("window.replyLengths")
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0)
    chunks = client.chat.completions.create(
        model="second", messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=48, stream=True)
    expected = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert reply.locator(":scope > .text").text_content() == expected
    assert len(lengths) >= 5 and lengths == sorted(lengths), lengths  # grew in many steps, never shrank
    expect(reply.locator(".meta")).to_have_text(re.compile(r"^\d+ tokens · finish: (stop|length)$"))
    shoot(page, "chat")

    # Terminate from the table: Cancel keeps it, the dialog's Terminate ends it.
    row.get_by_role("button", name="Terminate").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Terminate second?")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(row).to_have_count(1)
    row.get_by_role("button", name="Terminate").focus()  # this time from the keyboard
    page.keyboard.press("Enter")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Tab")
    expect(dialog.get_by_role("button", name="Terminate")).to_be_focused()
    page.keyboard.press("Enter")
    expect(row).to_have_count(0, timeout=90_000)
    assert httpx.get(server.url("/v1/models/second"), timeout=30).status_code == 404


def test_launch_errors_in_the_servers_words(page: Page, server: RunningServer) -> None:
    page.get_by_role("combobox", name="Model name").fill("no-such-model")
    page.get_by_role("button", name="Launch", exact=True).click()
    said = httpx.post(server.url("/v1/models"), json={"model_name": "no-such-model", "model_type": "LLM"},
                      timeout=30).json()["detail"]
    expect(page.locator("#launch").get_by_role("alert")).to_have_text(said)
    expect(page.get_by_role("progressbar")).to_be_hidden()


def test_stop_aborts_the_stream_on_the_server(page: Page, server: RunningServer) -> None:
    # Greedy on the tiny model runs to max tokens (1900 tokens: seconds), so Stop lands mid-stream.
    _set_chat_parameters(page, "tiny", "0", "1900")
    before = _aborted(server, "tiny")
    page.get_by_role("textbox", name="Message", exact=True).fill("Tell me a long story")
    page.get_by_role("button", name="Send").click()
    reply = page.get_by_role("log", name="Conversation").locator(".msg.assistant").last
    expect(reply.locator(":scope > .text")).not_to_have_text("")
    # Stop as soon as tokens show: waiting for the status strip's next /metrics poll (every 2 s) first let a
    # fast engine finish the 1900 tokens, and Stop was disabled by then.
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_enabled()
    stop.click()
    expect(reply).to_have_attribute("data-state", "stopped")
    expect(stop).to_be_disabled()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    # The status strip (from /metrics) shows nothing in flight once the server has aborted it.
    expect(page.locator("#status-inflight")).to_have_text("0", timeout=30_000)
    # The browser closed the connection; the server noticed and aborted the generation.
    deadline = time.monotonic() + 60
    while _aborted(server, "tiny") <= before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _aborted(server, "tiny") == before + 1


def test_reasoning_is_collapsed_and_thinking_switches(page: Page, server: RunningServer,
                                                       tiny_reasoning_model: Path) -> None:
    registration = llm_registration("ui-think", tiny_reasoning_model,
                                    model_ability=["chat", "generate", "reasoning", "hybrid"],
                                    reasoning_start_tag="<think>", reasoning_end_tag="</think>")
    assert httpx.post(server.url("/v1/model_registrations/LLM"), json={"model": json.dumps(registration)},
                      timeout=30).status_code == 200
    launched = httpx.post(server.url("/v1/models"), json={"model_name": "ui-think", "model_uid": "think",
                                                          "model_engine": "transformers"}, timeout=LOAD_S)
    assert launched.status_code == 200, launched.text
    try:
        _set_chat_parameters(page, "think", "0", "12")
        thinking = page.get_by_role("checkbox", name="Enable thinking")
        expect(thinking).to_be_enabled()  # a "hybrid" model has the switch
        expect(thinking).to_be_checked()
        message = page.get_by_role("textbox", name="Message", exact=True)
        message.fill("why?")
        page.get_by_role("button", name="Send").click()
        reply = page.get_by_role("log", name="Conversation").locator(".msg.assistant").last
        expect(reply).to_have_attribute("data-state", "done")
        client = openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0)
        chunks = list(client.chat.completions.create(
            model="think", messages=[{"role": "user", "content": "why?"}], temperature=0, max_tokens=12,
            stream=True, extra_body={"chat_template_kwargs": {"enable_thinking": True}}))
        reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
        assert reasoning  # the template opened <think>: the reply starts as reasoning
        disclosure = reply.locator("details")
        expect(disclosure.locator("summary")).to_have_text("Reasoning")
        expect(disclosure).not_to_have_attribute("open", "")  # collapsed until the reader opens it
        assert disclosure.locator(".text").text_content() == reasoning
        disclosure.locator("summary").press("Enter")  # the keyboard opens it
        expect(disclosure).to_have_attribute("open", "")

        thinking.uncheck()
        message.fill("why?")
        page.get_by_role("button", name="Send").click()
        quiet = page.get_by_role("log", name="Conversation").locator(".msg.assistant").last
        expect(quiet).to_have_attribute("data-state", "done")
        expect(quiet.locator("details")).to_be_hidden()  # no reasoning with thinking off
        expect(quiet.locator(":scope > .text")).not_to_have_text("")
    finally:
        httpx.delete(server.url("/v1/models/think"), timeout=90)
        httpx.delete(server.url("/v1/model_registrations/LLM/ui-think"), timeout=30)


def test_tool_calls_are_shown(page: Page) -> None:
    # The tiny models never write tool-call markup, so this feeds the page the wire format the server
    # sends for parsed calls (README: one delta.tool_calls entry per finished call) to check how it shows.
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Checking. "}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                             "function": {"name": "get_weather",
                                                                          "arguments": '{"city": "Paris"}'}}]},
                      "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    sent: list[dict[str, object]] = []

    def fulfill(route: Route) -> None:
        sent.append(json.loads(route.request.post_data or "{}"))
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.route("**/v1/chat/completions", fulfill)
    page.locator("summary", has_text="Parameters").click()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    page.get_by_role("textbox", name="Tools (JSON)").fill(json.dumps(tools))
    page.get_by_role("textbox", name="Message", exact=True).fill("Weather in Paris?")
    page.get_by_role("button", name="Send").click()
    reply = page.get_by_role("log", name="Conversation").locator(".msg.assistant").last
    expect(reply).to_have_attribute("data-state", "done")
    expect(reply.locator(".tool-call .tool-label")).to_have_text("Tool call")
    expect(reply.locator(".tool-call code")).to_have_text('get_weather({"city": "Paris"})')
    expect(reply.locator(":scope > .text")).to_have_text("Checking. ")
    expect(reply.locator(".meta")).to_have_text("finish: tool_calls")
    assert sent[0]["tools"] == tools and sent[0]["stream"] is True


def _encoder_registration(kind: str, name: str, model_dir: Path) -> str:
    spec = {"model_format": "pytorch", "model_hub": "huggingface", "model_id": None,
            "model_uri": f"file://{model_dir}", "model_revision": None, "quantization": "none"}
    extra = {"dimensions": 64, "max_tokens": 512} if kind == "embedding" else {"type": "normal", "max_tokens": 512}
    return json.dumps({"version": 2, "model_name": name, "language": ["en"], **extra, "model_specs": [spec]})


def _register(page: Page, kind: str, text: str, persist: bool = False) -> None:
    page.get_by_role("combobox", name="Registration type").select_option(kind)
    page.get_by_role("textbox", name="Registration JSON").fill(text)
    page.get_by_role("checkbox", name="Persist").set_checked(persist)
    page.get_by_role("button", name="Register", exact=True).click()


def _launch(page: Page, name: str, uid: str) -> None:
    page.get_by_role("combobox", name="Model name").fill(name)
    page.get_by_role("textbox", name="Model UID").fill(uid)
    page.get_by_role("button", name="Launch", exact=True).click()
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuetext", f"{uid} is ready",
                                                            timeout=LOAD_S * 1000)


def test_registrations_and_encoder_try_out(page: Page, server: RunningServer, tiny_embedding_model: Path,
                                           tiny_rerank_model: Path, shoot: Callable[[Page, str], None]) -> None:
    alert = page.locator("#registrations").get_by_role("alert")
    # Invalid JSON, then valid JSON that is not a registration, then one with several faults: the
    # server's own words in the alert, every fault named at once.
    for text in ("{not json", '{"model_name": "half"}', '{"model_name": "../bad"}'):
        _register(page, "LLM", text)
        said = httpx.post(server.url("/v1/model_registrations/LLM"), json={"model": text}, timeout=30).json()
        expect(alert).to_have_text(said["detail"])
    for fault in ("model_specs", "model_name '../bad' is invalid", "model_family is required"):
        expect(alert).to_contain_text(fault)
    shoot(page, "invalid")

    _register(page, "embedding", _encoder_registration("embedding", "emb-ui", tiny_embedding_model), persist=True)
    expect(page.locator("#registrations").get_by_role("status")).to_have_text("Registered emb-ui (persisted).")
    expect(alert).to_be_hidden()
    _register(page, "rerank", _encoder_registration("rerank", "rr-ui", tiny_rerank_model))
    table = page.get_by_role("table", name="Registrations")
    page.get_by_role("combobox", name="Show type").select_option("embedding")
    expect(table.get_by_role("row").filter(has_text="LLM")).to_have_count(0)
    custom = table.get_by_role("row").filter(has=page.get_by_role("rowheader", name="emb-ui", exact=True))
    expect(custom).to_contain_text("custom")
    builtin = table.get_by_role("row").filter(has=page.get_by_role("rowheader", name="bge-small-en-v1.5"))
    expect(builtin).to_contain_text("built-in")
    expect(builtin.get_by_role("button")).to_have_count(0)  # built-ins cannot be unregistered

    # The launch form knows the new names and their types.
    _launch(page, "emb-ui", "emb")
    expect(page.get_by_role("combobox", name="Model type")).to_have_value("embedding")
    _launch(page, "rr-ui", "rr")
    try:
        page.get_by_role("combobox", name="Embedding model").select_option("emb")
        page.get_by_role("textbox", name="Text to embed").fill("hello world")
        page.get_by_role("button", name="Embed").click()
        vector = httpx.post(server.url("/v1/embeddings"), json={"model": "emb", "input": "hello world"},
                            timeout=30).json()["data"][0]["embedding"]
        head = ", ".join(f"{x:.4f}" for x in vector[:6])
        expect(page.locator("#embed-result")).to_contain_text("64 dimensions")
        expect(page.locator("#embed-result")).to_contain_text(f"[{head}, …]")

        page.get_by_role("combobox", name="Rerank model").select_option("rr")
        page.get_by_role("textbox", name="Query").fill("cat")
        page.get_by_role("textbox", name="Documents, one per line").fill("a cat\nthe dog\nnumbers")
        page.get_by_role("button", name="Rerank").click()
        ranked = httpx.post(server.url("/v1/rerank"), json={"model": "rr", "query": "cat",
                                                             "documents": ["a cat", "the dog", "numbers"]},
                            timeout=30).json()["results"]
        items = page.get_by_role("list", name="Rerank results").get_by_role("listitem")
        expect(items).to_have_text([f"{r['relevance_score']:.4f}  {['a cat', 'the dog', 'numbers'][r['index']]}"
                                    for r in ranked])
        shoot(page, "tryout")
    finally:
        for uid in ("emb", "rr"):
            httpx.delete(server.url(f"/v1/models/{uid}"), timeout=90)

    custom.get_by_role("button", name="Unregister").click()
    page.get_by_role("dialog").get_by_role("button", name="Unregister").click()
    expect(custom).to_have_count(0)
    assert httpx.get(server.url("/v1/model_registrations/embedding/emb-ui"), timeout=30).status_code == 404
    httpx.delete(server.url("/v1/model_registrations/rerank/rr-ui"), timeout=30)


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280x800", "phone"])
def test_layout_fits_the_width(browser: Browser, server: RunningServer, viewport: dict[str, int]) -> None:
    page = _open(browser, server.url("/ui"), viewport)
    try:
        expect(page.get_by_role("table", name="Running models").get_by_role("rowheader", name="tiny")).to_be_visible()
        expect(page.locator("#status-tps")).not_to_have_text("–", timeout=20_000)  # two /metrics scrapes
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = "desktop" if viewport is DESKTOP else "phone"
        page.screenshot(path=str(ARTIFACTS / f"layout-{name}.png"), full_page=True)
        # Nothing sticks out sideways (wide tables scroll inside their own box).
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        # Every form control has an accessible name (a label).
        unnamed = page.evaluate("""() => [...document.querySelectorAll("input, select, textarea, button")]
            .filter((el) => el.type !== "hidden" && !el.labels?.length && !el.getAttribute("aria-label")
                    && !el.textContent.trim()).map((el) => el.outerHTML)""")
        assert unnamed == []
        # Nothing covers anything: scrolled into view, every control is what a click at its centre hits.
        covered = page.evaluate("""() => [...document.querySelectorAll("main button, main input, main select")]
            .filter((el) => el.offsetParent !== null && el.type !== "checkbox" && !el.closest("details:not([open])"))
            .filter((el) => {
                el.scrollIntoView({block: "center"});
                const box = el.getBoundingClientRect();
                const hit = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
                return !el.contains(hit);
            }).map((el) => el.id || el.outerHTML.slice(0, 80))""")
        assert covered == []
    finally:
        page.context.close()


def test_api_key_is_asked_once_and_sent_on_every_call(browser: Browser, tiny_model: Path,
                                                      tmp_path: Path) -> None:
    keyed = launch_serve(tiny_model, tmp_path / "keyed", engine="transformers",
                         env={"BERTH_MODEL_UID": "tiny", "BERTH_API_KEY": API_KEY})
    try:
        # /ui and its files are static and open; the API is not.
        assert httpx.get(keyed.url("/ui"), timeout=30).status_code == 200
        assert httpx.get(keyed.url("/ui/js/api.js"), timeout=30).status_code == 200
        assert httpx.get(keyed.url("/v1/models"), timeout=30).status_code == 401
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        sent: list[tuple[str, str | None]] = []
        page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
        page.goto(keyed.url("/ui"))
        dialog = page.get_by_role("dialog", name="API key")
        expect(dialog).to_be_visible()
        dialog.get_by_label("API key").fill("wrong")
        dialog.get_by_role("button", name="Continue").click()
        expect(dialog).to_contain_text("refused")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "api-key-dialog.png"))
        dialog.get_by_label("API key").fill(API_KEY)
        dialog.get_by_role("button", name="Continue").click()
        expect(dialog).to_be_hidden()
        expect(page.get_by_role("table", name="Running models").get_by_role("rowheader", name="tiny")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('berth.apiKey')") == API_KEY

        # A reload in the same tab asks nothing; every API call, /metrics included, carries the key.
        sent.clear()
        page.reload()
        expect(page.get_by_role("table", name="Running models").get_by_role("rowheader", name="tiny")).to_be_visible()
        expect(page.locator("#status-tps")).not_to_have_text("–", timeout=20_000)
        expect(dialog).to_be_hidden()
        api_calls = [(url, auth) for url, auth in sent if "/v1/" in url or url.endswith("/metrics")]
        assert any(url.endswith("/metrics") for url, _ in api_calls)
        assert any("/v1/model_registrations/" in url for url, _ in api_calls)
        assert all(auth == f"Bearer {API_KEY}" for _, auth in api_calls), api_calls
        assert all(auth is None for url, auth in sent if "/ui" in url)  # static files: no key needed
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "api-key.png"))
        context.close()
    finally:
        keyed.stop()
