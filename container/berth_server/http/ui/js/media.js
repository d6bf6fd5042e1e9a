// Try-out forms for audio and image models: speech to text (upload or record), text to speech, text to image.
import { apiFetch, apiJson, readJson } from "./api.js";
import { on, say } from "./events.js";

const selects = {
  "transcribe-model": "audio2text",
  "speak-model": "text2audio",
  "image-model": "text2image",
};
let recorder = null;
let recorded = null; // the last recording, sent when no file is chosen

function fill(select, models, ability) {
  const uids = models.filter((m) => m.abilities.includes(ability) && m.state === "ready").map((m) => m.uid);
  if (JSON.stringify(uids) === select.dataset.shown) return;
  select.dataset.shown = JSON.stringify(uids);
  const chosen = select.value;
  const options = uids.map((uid) => new Option(uid, uid));
  if (!uids.length) options.push(new Option(`no ${ability} model is running`, ""));
  select.replaceChildren(...options);
  select.disabled = !uids.length;
  select.value = uids.includes(chosen) ? chosen : (uids[0] || "");
}

async function transcribe(event) {
  event.preventDefault();
  const alert = document.getElementById("transcribe-alert");
  const result = document.getElementById("transcribe-result");
  say(alert, "");
  result.textContent = "";
  const file = document.getElementById("transcribe-file").files[0] || recorded;
  if (!file) {
    say(alert, "Choose an audio file, or record one.");
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name || "recording.webm");
  form.append("model", document.getElementById("transcribe-model").value);
  try {
    const reply = await readJson(await apiFetch("v1/audio/transcriptions", { method: "POST", body: form }));
    result.textContent = reply.text;
  } catch (error) {
    say(alert, error.message);
  }
}

async function record() {
  const button = document.getElementById("record-button");
  const alert = document.getElementById("transcribe-alert");
  if (recorder) {
    recorder.stop();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((track) => track.stop());
      recorded = new File(chunks, "recording.webm", { type: recorder.mimeType || "audio/webm" });
      recorder = null;
      button.textContent = "Record";
      button.setAttribute("aria-pressed", "false");
      document.getElementById("transcribe-form").requestSubmit();
    };
    recorder.start();
    button.textContent = "Stop and transcribe";
    button.setAttribute("aria-pressed", "true");
  } catch (error) {
    say(alert, `Cannot record: ${error.message}`);
  }
}

async function speak(event) {
  event.preventDefault();
  const alert = document.getElementById("speak-alert");
  const audio = document.getElementById("speak-audio");
  say(alert, "");
  try {
    const response = await apiFetch("v1/audio/speech", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: document.getElementById("speak-model").value, response_format: "wav",
                             input: document.getElementById("speak-text").value, voice: "" }),
    });
    if (!response.ok) await readJson(response); // throws the server's message
    if (audio.src) URL.revokeObjectURL(audio.src);
    audio.src = URL.createObjectURL(await response.blob());
    audio.hidden = false;
    audio.play().catch(() => {}); // autoplay may be refused: the controls stay
  } catch (error) {
    say(alert, error.message);
  }
}

async function generate(event) {
  event.preventDefault();
  const alert = document.getElementById("image-alert");
  const image = document.getElementById("image-result");
  say(alert, "");
  const steps = document.getElementById("image-steps").value;
  try {
    const reply = await apiJson("v1/images/generations", {
      method: "POST",
      body: { model: document.getElementById("image-model").value, response_format: "b64_json",
              prompt: document.getElementById("image-prompt").value,
              size: document.getElementById("image-size").value.trim(),
              ...(steps ? { num_inference_steps: Number(steps) } : {}) },
    });
    image.src = `data:image/png;base64,${reply.data[0].b64_json}`;
    image.hidden = false;
  } catch (error) {
    say(alert, error.message);
  }
}

/** Start the section. */
export function init() {
  on("models", (models) => {
    for (const [id, ability] of Object.entries(selects)) fill(document.getElementById(id), models, ability);
  });
  document.getElementById("transcribe-form").addEventListener("submit", transcribe);
  document.getElementById("record-button").addEventListener("click", record);
  document.getElementById("speak-form").addEventListener("submit", speak);
  document.getElementById("image-form").addEventListener("submit", generate);
}
