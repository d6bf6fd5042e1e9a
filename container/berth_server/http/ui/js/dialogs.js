// Modal dialogs: a confirmation before destructive actions, and the API-key prompt.

/** Ask the user to confirm `text`; resolves true when they press the `action` button. */
export function confirmAction(title, text, action) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = action;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    document.getElementById("confirm-cancel").focus(); // the safe choice has the focus
  });
}

/** Ask for the API key; `refused` says the last one was wrong. Resolves with the key typed. */
export function askForKey(refused) {
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  document.getElementById("key-text").textContent = refused
    ? "The server refused that key. Enter the API key again."
    : "This server needs an API key. It stays in this tab's session storage.";
  input.value = "";
  return new Promise((resolve) => {
    dialog.oncancel = (event) => event.preventDefault(); // without a key the page cannot work: Escape stays
    form.onsubmit = () => resolve(input.value.trim()); // method="dialog" closes it; `required` refuses ""
    dialog.showModal();
    input.focus();
  });
}
