// The status strip: tokens/s, requests in flight and queue depth, from GET /metrics (Prometheus text).
import { apiFetch } from "./api.js";
import { every, say } from "./events.js";

const REFRESH_MS = 2000;
const tps = document.getElementById("status-tps");
const inflight = document.getElementById("status-inflight");
const queue = document.getElementById("status-queue");
const note = document.getElementById("status-note");
let previous = null; // {tokens, at}: the last scrape, for the rate

/** Sum every sample of each metric name in a Prometheus text exposition. */
export function sumByName(text) {
  const sums = new Map();
  for (const line of text.split("\n")) {
    const match = /^([A-Za-z_:][\w:]*)(?:\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const value = Number(match[2]);
    if (Number.isFinite(value)) sums.set(match[1], (sums.get(match[1]) || 0) + value);
  }
  return sums;
}

async function scrape() {
  let text;
  try {
    const response = await apiFetch("metrics");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    text = await response.text();
  } catch (error) {
    say(note, `metrics unavailable: ${error.message}`);
    return;
  }
  say(note, "");
  const sums = sumByName(text);
  const tokens = sums.get("berth_generated_tokens_total") || 0;
  const at = performance.now();
  if (previous) {
    const rate = Math.max(0, tokens - previous.tokens) / ((at - previous.at) / 1000);
    tps.textContent = rate.toFixed(rate < 10 ? 1 : 0);
  }
  previous = { tokens, at };
  inflight.textContent = String(sums.get("berth_model_running_requests") || 0);
  queue.textContent = String(sums.get("berth_model_queue_depth") || 0);
}

/** Start the strip. */
export function init() {
  every(REFRESH_MS, scrape);
}
