// Chat playground: streams POST /v1/chat/completions token by token; "Stop" aborts the request.
import { ApiError, apiFetch, messageOf, readJson, sseEvents } from "./api.js";
import { on, say } from "./events.js";

const form = document.getElementById("chat-form");
const select = document.getElementById("chat-model");
const log = document.getElementById("conversation");
const message = document.getElementById("chat-message");
const send = document.getElementById("chat-send");
const stop = document.getElementById("chat-stop");
const alert = document.getElementById("chat-alert");
const thinking = document.getElementById("chat-thinking");
const thinkingHint = document.getElementById("chat-thinking-hint");
let history = []; // the conversation sent with every request: user and assistant turns
let controller = null; // aborts the running stream
let modelsShown = "";
let abilitiesOf = new Map();

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

/** Keep the newest text in view, unless the reader scrolled up to read something older. */
function follow(update) {
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
  update();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function addUserTurn(text) {
  const turn = element("div", "msg user");
  turn.append(element("div", "who", "You"), element("div", "text", text));
  follow(() => log.append(turn));
}

/** An assistant turn that grows as deltas arrive: reasoning (collapsed), content, tool calls, a footer. */
class Reply {
  constructor(model) {
    this.node = element("div", "msg assistant");
    this.node.dataset.state = "streaming";
    this.reasoning = element("details", "reasoning");
    this.reasoning.hidden = true;
    this.reasoningText = document.createTextNode("");
    const body = element("div", "text");
    body.append(this.reasoningText);
    this.reasoning.append(element("summary", "", "Reasoning"), body);
    this.text = document.createTextNode("");
    const content = element("div", "text");
    content.append(this.text);
    this.tools = element("div", "tool-calls");
    this.meta = element("div", "meta", "…");
    this.calls = [];
    this.content = "";
    this.finish = null;
    this.usage = null;
    this.node.append(element("div", "who", model), this.reasoning, content, this.tools, this.meta);
    follow(() => log.append(this.node));
  }

  addReasoning(text) {
    this.reasoning.hidden = false;
    follow(() => this.reasoningText.appendData(text));
  }

  addContent(text) {
    this.content += text;
    follow(() => this.text.appendData(text));
  }

  /** Streamed tool calls: entries with the same index add to one call (name and argument pieces). */
  addToolCalls(deltas) {
    for (const delta of deltas) {
      const index = delta.index ?? this.calls.length;
      const call = this.calls[index] || (this.calls[index] = { name: "", arguments: "" });
      call.name += delta.function?.name || "";
      call.arguments += delta.function?.arguments || "";
    }
    follow(() => this.tools.replaceChildren(...this.calls.filter(Boolean).map((call) => {
      const box = element("div", "tool-call");
      box.append(element("span", "tool-label", "Tool call"), element("code", "", `${call.name}(${call.arguments})`));
      return box;
    })));
  }

  end(state, note) {
    this.node.dataset.state = state;
    const parts = [];
    if (this.usage) parts.push(`${this.usage.completion_tokens} tokens`);
    if (note) parts.push(note);
    else if (this.finish) parts.push(`finish: ${this.finish}`);
    this.meta.textContent = parts.join(" · ");
  }
}

function setStreaming(streaming) {
  send.disabled = streaming;
  stop.disabled = !streaming;
  log.setAttribute("aria-busy", String(streaming)); // screen readers read the reply once, not per token
}

function numberOf(id) {
  const value = document.getElementById(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function requestBody(model) {
  const system = document.getElementById("chat-system").value.trim();
  const body = {
    model, stream: true, stream_options: { include_usage: true },
    messages: [...(system ? [{ role: "system", content: system }] : []), ...history],
    temperature: numberOf("chat-temperature"), max_tokens: numberOf("chat-max-tokens"),
  };
  if (!thinking.disabled) body.chat_template_kwargs = { enable_thinking: thinking.checked };
  const tools = document.getElementById("chat-tools").value.trim();
  if (tools) {
    try {
      body.tools = JSON.parse(tools);
    } catch (error) {
      throw new ApiError(`Tools (JSON) is not valid JSON: ${error.message}`, 0);
    }
  }
  return body;
}

async function stream(reply, body, signal) {
  const response = await apiFetch("v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  });
  if (!response.ok) await readJson(response); // throws the server's message
  for await (const event of sseEvents(response)) {
    if (event.error) throw new ApiError(messageOf(event, 500), 500); // an error after the stream began
    if (event.usage) reply.usage = event.usage;
    for (const choice of event.choices || []) {
      const delta = choice.delta || {};
      const reasoning = delta.reasoning_content ?? delta.reasoning;
      if (reasoning) reply.addReasoning(reasoning);
      if (delta.content) reply.addContent(delta.content);
      if (delta.tool_calls?.length) reply.addToolCalls(delta.tool_calls);
      if (choice.finish_reason) reply.finish = choice.finish_reason;
    }
  }
}

async function submit(event) {
  event.preventDefault();
  if (controller) return;
  const text = message.value.trim();
  say(alert, "");
  if (!select.value) {
    say(alert, "No chat model is ready: launch one first.");
    return;
  }
  if (!text) {
    message.focus();
    return;
  }
  let body;
  history.push({ role: "user", content: text });
  try {
    body = requestBody(select.value);
  } catch (error) {
    history.pop();
    say(alert, error.message);
    return;
  }
  addUserTurn(text);
  message.value = "";
  const reply = new Reply(select.value);
  controller = new AbortController();
  setStreaming(true);
  try {
    await stream(reply, body, controller.signal);
    reply.end("done");
  } catch (error) {
    if (error.name === "AbortError") {
      reply.end("stopped", "stopped");
    } else {
      reply.end("failed", "failed");
      say(alert, error.message);
    }
  } finally {
    if (reply.content) history.push({ role: "assistant", content: reply.content });
    controller = null;
    setStreaming(false);
    message.focus();
  }
}

function updateThinking() {
  const abilities = abilitiesOf.get(select.value) || [];
  // Only templates with a switch ("hybrid") take enable_thinking; the server refuses it elsewhere.
  thinking.disabled = !abilities.includes("hybrid");
  thinkingHint.textContent = thinking.disabled ? "This model has no thinking switch." : "";
}

function fillModels(models) {
  const chat = models.filter((m) => m.type === "LLM" && (m.abilities.includes("chat") || !m.abilities.length));
  const key = JSON.stringify(chat.map((m) => [m.uid, m.state, m.abilities, m.parent]));
  if (key === modelsShown) return;
  modelsShown = key;
  abilitiesOf = new Map(chat.map((m) => [m.uid, m.abilities]));
  const chosen = select.value;
  select.replaceChildren(...chat.map((m) => {
    const label = m.parent ? `${m.uid} (adapter on ${m.parent})` : m.uid;
    const option = element("option", "", m.state === "ready" ? label : `${label} (${m.state})`);
    option.value = m.uid;
    option.disabled = m.state !== "ready";
    return option;
  }));
  const ready = chat.filter((m) => m.state === "ready").map((m) => m.uid);
  select.value = ready.includes(chosen) ? chosen : (ready[0] || "");
  updateThinking();
}

/** Start the section. */
export function init() {
  on("models", fillModels);
  select.addEventListener("change", updateThinking);
  form.addEventListener("submit", submit);
  stop.addEventListener("click", () => controller?.abort());
  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === "Escape" && controller) {
      controller.abort();
    }
  });
  document.getElementById("chat-clear").addEventListener("click", () => {
    controller?.abort();
    history = [];
    log.replaceChildren();
    say(alert, "");
  });
}
