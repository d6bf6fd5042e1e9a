// Launch: POST /v1/models without waiting, then a progress bar that follows /v1/models/{uid}/progress.
import { apiJson } from "./api.js";
import { emit, on, say } from "./events.js";

const POLL_MS = 700;
const form = document.getElementById("launch-form");
const nameInput = document.getElementById("launch-name");
const typeSelect = document.getElementById("launch-type");
const button = document.getElementById("launch-button");
const names = document.getElementById("launch-names");
const block = document.getElementById("launch-progress");
const label = document.getElementById("launch-progress-label");
const bar = document.getElementById("launch-progressbar");
const alert = document.getElementById("launch-alert");
let typeOf = new Map(); // registration name -> model type, to pick the type when a known name is chosen

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Show progress: a fraction 0..1, or null while the server cannot tell (loading reports 0 until ready). */
function showProgress(text, fraction) {
  block.hidden = false;
  label.textContent = text;
  bar.setAttribute("aria-valuetext", text);
  if (fraction === null) {
    bar.removeAttribute("aria-valuenow");
    bar.classList.add("indeterminate");
  } else {
    const percent = Math.round(fraction * 100);
    bar.setAttribute("aria-valuenow", String(percent));
    bar.classList.remove("indeterminate");
    bar.style.setProperty("--value", `${percent}%`);
  }
}

function launchBody() {
  const body = { model_name: nameInput.value.trim(), model_type: typeSelect.value };
  for (const [id, key] of [["launch-uid", "model_uid"], ["launch-path", "model_path"],
    ["launch-engine", "model_engine"]]) {
    const value = document.getElementById(id).value.trim();
    if (value) body[key] = value;
  }
  return body;
}

/** Poll until the model is ready (true) or failed/gone (false, with the server's reason in the alert). */
async function follow(uid) {
  for (;;) {
    let described;
    let progress;
    try {
      [described, { progress }] = await Promise.all([
        apiJson(`v1/models/${encodeURIComponent(uid)}`),
        apiJson(`v1/models/${encodeURIComponent(uid)}/progress`),
      ]);
    } catch (error) {
      say(alert, `${uid}: ${error.message}`);
      return false;
    }
    const state = described.state || "loading";
    if (state === "ready") {
      showProgress(`${uid} is ready`, 1);
      return true;
    }
    if (state === "failed" || state === "stopped") {
      showProgress(`${uid} ${state}`, progress || 0);
      say(alert, described.reason || `${uid} ${state}`);
      return false;
    }
    showProgress(`${uid}: ${state}… ${Math.round((progress || 0) * 100)}%`, progress > 0 ? progress : null);
    await sleep(POLL_MS);
  }
}

async function launch(event) {
  event.preventDefault();
  say(alert, "");
  const body = launchBody();
  if (!body.model_name) {
    say(alert, "Model name is required.");
    nameInput.focus();
    return;
  }
  button.disabled = true;
  showProgress(`Launching ${body.model_uid || body.model_name}…`, null);
  try {
    const { model_uid: uid } = await apiJson("v1/models?wait_ready=false", { method: "POST", body });
    emit("models-changed");
    await follow(uid);
  } catch (error) {
    block.hidden = true;
    say(alert, error.message);
  } finally {
    button.disabled = false;
    emit("models-changed");
  }
}

function fillNames(registrations) {
  typeOf = new Map(registrations.map((r) => [r.name, r.type]));
  names.replaceChildren(...registrations.map((r) => {
    const option = document.createElement("option");
    option.value = r.name;
    option.label = `${r.type}${r.builtin ? "" : ", custom"}`;
    return option;
  }));
}

/** Start the section: names come from the registrations section; a known name sets the model type. */
export function init() {
  on("registrations", fillNames);
  nameInput.addEventListener("input", () => {
    const type = typeOf.get(nameInput.value.trim());
    if (type) typeSelect.value = type;
  });
  form.addEventListener("submit", launch);
}
