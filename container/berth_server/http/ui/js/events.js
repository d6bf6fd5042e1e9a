// A tiny event bus between the page's modules: one module owns a piece of server state and announces it.
const bus = new EventTarget();

/** Announce `name` with `detail` to every listener. */
export function emit(name, detail) {
  bus.dispatchEvent(new CustomEvent(name, { detail }));
}

/** Call `listener(detail)` whenever `name` is announced. */
export function on(name, listener) {
  bus.addEventListener(name, (event) => listener(event.detail));
}

/** Show `message` in an element (an alert or a status line), or hide it when message is empty. */
export function say(element, message) {
  element.textContent = message || "";
  element.hidden = !message;
}

/** Run `task` every `ms` while the tab is visible (and once now); returns a function that runs it at once. */
export function every(ms, task) {
  let timer = null;
  const run = async () => {
    clearTimeout(timer);
    try {
      if (!document.hidden) await task();
    } finally {
      timer = setTimeout(run, ms);
    }
  };
  document.addEventListener("visibilitychange", () => { if (!document.hidden) run(); });
  run();
  return run;
}
