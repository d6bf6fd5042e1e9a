// Registrations: built-in and custom models of every type, filterable; register JSON; unregister custom ones.
import { apiJson } from "./api.js";
import { confirmAction } from "./dialogs.js";
import { emit, say } from "./events.js";

const TYPES = ["LLM", "embedding", "rerank", "audio", "image"];
const table = document.querySelector("#registrations-table tbody");
const filter = document.getElementById("registrations-filter");
const form = document.getElementById("register-form");
const typeSelect = document.getElementById("register-type");
const textarea = document.getElementById("register-json");
const persist = document.getElementById("register-persist");
const status = document.getElementById("register-status");
const alert = document.getElementById("register-alert");
let all = [];

const EXAMPLE = {
  version: 2, model_name: "my-model", model_family: "my-model-family", model_ability: ["chat"],
  context_length: 2048, chat_template: "…", model_lang: ["en"],
  model_specs: [{ model_format: "pytorch", model_size_in_billions: "0_5", quantization: "none",
    model_uri: "file:///path/to/model" }],
};

function render() {
  const shown = all.filter((r) => !filter.value || r.type === filter.value);
  table.replaceChildren(...shown.map((r) => {
    const row = document.createElement("tr");
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = r.name;
    row.append(name);
    row.insertCell().textContent = r.type;
    row.insertCell().textContent = r.builtin ? "built-in" : "custom";
    const actions = row.insertCell();
    if (!r.builtin) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "small";
      button.textContent = "Unregister";
      button.setAttribute("aria-label", `Unregister ${r.name}`);
      button.addEventListener("click", () => unregister(r));
      actions.append(button);
    }
    return row;
  }));
}

/** Fetch every type's registrations, redraw, and hand the names to the launch form. */
export async function refresh() {
  try {
    const lists = await Promise.all(TYPES.map((type) => apiJson(`v1/model_registrations/${type}`)));
    all = lists.flatMap((list, i) => list.map((r) => ({ name: r.model_name, type: TYPES[i], builtin: !!r.is_builtin })));
    render();
    emit("registrations", all);
  } catch (error) {
    say(alert, `Could not list the registrations: ${error.message}`);
  }
}

async function register(event) {
  event.preventDefault();
  say(alert, "");
  say(status, "");
  // The text goes to the server as is: its validation speaks, in its own words.
  const body = { model: textarea.value, persist: persist.checked };
  try {
    await apiJson(`v1/model_registrations/${typeSelect.value}`, { method: "POST", body });
  } catch (error) {
    say(alert, error.message);
    return;
  }
  let name = "";
  try {
    name = JSON.parse(textarea.value).model_name || "";
  } catch { /* the server accepted it; the name is only for the message */ }
  say(status, `Registered ${name || "the model"}${persist.checked ? " (persisted)" : ""}.`);
  await refresh();
}

async function unregister(r) {
  const sure = await confirmAction("Unregister model?", `Unregister the ${r.type} model ${r.name}?`, "Unregister");
  if (!sure) return;
  say(alert, "");
  say(status, "");
  try {
    await apiJson(`v1/model_registrations/${r.type}/${encodeURIComponent(r.name)}`, { method: "DELETE" });
    say(status, `Unregistered ${r.name}.`);
  } catch (error) {
    say(alert, error.message);
  }
  await refresh();
  filter.focus(); // its row and button are gone: keep the keyboard user in the section
}

/** Start the section. */
export function init() {
  textarea.placeholder = JSON.stringify(EXAMPLE, null, 2);
  filter.addEventListener("change", render);
  form.addEventListener("submit", register);
  refresh();
}
