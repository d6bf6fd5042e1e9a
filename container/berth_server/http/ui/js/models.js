// Running models: a table from GET /v1/models (plus each model's description), Terminate with confirmation.
import { apiJson } from "./api.js";
import { confirmAction } from "./dialogs.js";
import { emit, every, on, say } from "./events.js";

const REFRESH_MS = 3000;
const table = document.querySelector("#models-table tbody");
const empty = document.getElementById("models-empty");
const alert = document.getElementById("models-alert");
let shown = ""; // what the table shows now, so a refresh that changes nothing leaves focus alone

/** Bytes as "512 MiB" / "1.4 GiB". */
export function formatBytes(bytes) {
  if (typeof bytes !== "number" || !(bytes > 0)) return "–";
  const mib = bytes / 2 ** 20;
  return mib < 1024 ? `${Math.round(mib)} MiB` : `${(mib / 1024).toFixed(1)} GiB`;
}

async function describe(model) {
  try {
    return { ...model, ...(await apiJson(`v1/models/${encodeURIComponent(model.id)}`)) };
  } catch {
    return model; // it may have gone between the two calls; the list's fields still describe it
  }
}

/** Every model the server runs, with its uid, type, engine, state, abilities and memory where known. */
async function fetchModels() {
  const listed = (await apiJson("v1/models")).data || [];
  // A LoRA adapter is listed with its base model as `parent`: chat can use it, but it has no process.
  const described = await Promise.all(listed.map((m) => (m.parent ? m : describe(m))));
  return described.map((m) => ({
    uid: m.id,
    type: m.model_type || "LLM",
    engine: m.model_engine || "",
    state: m.state || "",
    abilities: m.model_ability || [],
    memory: m.memory_bytes,
    reason: m.reason || "",
    parent: m.parent || null,
  }));
}

function cell(row, label, text, className) {
  const td = row.insertCell();
  td.dataset.label = label; // the column's name, shown beside the value on a phone
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function render(models) {
  const focused = document.activeElement?.dataset?.uid;
  table.replaceChildren();
  for (const model of models.filter((m) => !m.parent)) {
    const row = table.insertRow();
    const uid = document.createElement("th");
    uid.scope = "row";
    uid.textContent = model.uid;
    row.append(uid);
    cell(row, "Type", model.type);
    cell(row, "Engine", model.engine || "–");
    const state = cell(row, "State", "");
    const badge = document.createElement("span");
    badge.className = `badge state-${model.state}`;
    badge.textContent = model.state;
    if (model.reason) badge.title = model.reason;
    state.append(badge);
    cell(row, "Abilities", model.abilities.join(", ") || "–");
    cell(row, "Memory", formatBytes(model.memory), "num");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "danger small";
    button.textContent = "Terminate";
    button.dataset.uid = model.uid;
    button.setAttribute("aria-label", `Terminate ${model.uid}`);
    button.addEventListener("click", () => terminate(model.uid, button));
    row.insertCell().append(button);
    if (focused === model.uid) button.focus();
  }
  empty.hidden = models.some((m) => !m.parent);
}

async function terminate(uid, button) {
  const sure = await confirmAction("Terminate model?",
    `Terminate ${uid}? Its process exits and its memory is freed; requests to it will fail.`, "Terminate");
  if (!sure) {
    button.focus();
    return;
  }
  button.disabled = true;
  button.textContent = "Terminating…";
  say(alert, "");
  try {
    await apiJson(`v1/models/${encodeURIComponent(uid)}`, { method: "DELETE" });
  } catch (error) {
    say(alert, `Could not terminate ${uid}: ${error.message}`);
    alert.dataset.source = "terminate";
  }
  shown = "";
  await refresh();
}

/** Fetch the models, redraw the table when it changed, and announce them to the other sections. */
export async function refresh() {
  try {
    const models = await fetchModels();
    const now = JSON.stringify(models);
    if (now !== shown) {
      shown = now;
      render(models);
    }
    if (alert.dataset.source === "refresh") {
      say(alert, "");
      delete alert.dataset.source;
    }
    emit("models", models);
  } catch (error) {
    say(alert, `Could not list the models: ${error.message}`);
    alert.dataset.source = "refresh";
  }
}

/** Start the section: refresh every few seconds, and at once when another section changed the models. */
export function init() {
  const run = every(REFRESH_MS, refresh);
  on("models-changed", run);
}
