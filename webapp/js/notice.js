// Messages for the person: a polite status line for what went well, an alert for what did not.

import { byId, show } from "./dom.js";

let statusTimer = 0;

export function say(text) {
    const notice = byId("notice");
    notice.textContent = text;
    clearTimeout(statusTimer);
    statusTimer = setTimeout(() => { notice.textContent = ""; }, 5000);
}

export function warn(text) {
    byId("alert-text").textContent = text;
    show(byId("alert"));
}

export function clearWarning() {
    byId("alert-text").textContent = "";
    show(byId("alert"), false);
}

byId("alert-close").addEventListener("click", clearWarning);
