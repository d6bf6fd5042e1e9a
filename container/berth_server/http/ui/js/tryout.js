// Try-out forms for embedding (POST /v1/embeddings) and rerank (POST /v1/rerank) models.
import { apiJson } from "./api.js";
import { on, say } from "./events.js";

const embedModel = document.getElementById("embed-model");
const rerankModel = document.getElementById("rerank-model");

function fill(select, models, type) {
  const uids = models.filter((m) => m.type === type && m.state === "ready").map((m) => m.uid);
  if (JSON.stringify(uids) === select.dataset.shown) return;
  select.dataset.shown = JSON.stringify(uids);
  const chosen = select.value;
  const options = uids.map((uid) => new Option(uid, uid));
  if (!uids.length) options.push(new Option(`no ${type} model is running`, ""));
  select.replaceChildren(...options);
  select.disabled = !uids.length;
  select.value = uids.includes(chosen) ? chosen : (uids[0] || "");
}

async function embed(event) {
  event.preventDefault();
  const alert = document.getElementById("embed-alert");
  const result = document.getElementById("embed-result");
  say(alert, "");
  result.textContent = "";
  try {
    const reply = await apiJson("v1/embeddings", {
      method: "POST", body: { model: embedModel.value, input: document.getElementById("embed-text").value },
    });
    const vector = reply.data[0].embedding;
    const norm = Math.sqrt(vector.reduce((sum, x) => sum + x * x, 0));
    const head = vector.slice(0, 6).map((x) => x.toFixed(4)).join(", ");
    result.textContent = `${vector.length} dimensions, norm ${norm.toFixed(3)}, ${reply.usage.prompt_tokens} tokens: `
      + `[${head}${vector.length > 6 ? ", …" : ""}]`;
  } catch (error) {
    say(alert, error.message);
  }
}

async function rerank(event) {
  event.preventDefault();
  const alert = document.getElementById("rerank-alert");
  const list = document.getElementById("rerank-result");
  say(alert, "");
  list.replaceChildren();
  const documents = document.getElementById("rerank-documents").value.split("\n")
    .map((line) => line.trim()).filter(Boolean);
  try {
    const reply = await apiJson("v1/rerank", {
      method: "POST",
      body: { model: rerankModel.value, query: document.getElementById("rerank-query").value, documents },
    });
    list.replaceChildren(...reply.results.map((r) => {
      const item = document.createElement("li");
      item.textContent = `${r.relevance_score.toFixed(4)}  ${documents[r.index]}`;
      return item;
    }));
  } catch (error) {
    say(alert, error.message);
  }
}

/** Start the section. */
export function init() {
  on("models", (models) => {
    fill(embedModel, models, "embedding");
    fill(rerankModel, models, "rerank");
  });
  document.getElementById("embed-form").addEventListener("submit", embed);
  document.getElementById("rerank-form").addEventListener("submit", rerank);
}
