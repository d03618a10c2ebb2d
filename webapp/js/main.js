// The page's start: find out whether a session exists, then show the login form or the list,
// and move between them (a 401 anywhere, or logging out, returns to the login form).

import { whenSignedOut } from "./api.js";
import { byId, show } from "./dom.js";
import { describe } from "./errors.js";
import * as jobs from "./jobs.js";
import { LiveFeed } from "./live.js";
import { clearWarning, say, warn } from "./notice.js";
import { currentUser, logOut, setUpLoginForm } from "./session.js";
import * as todos from "./todos.js";

let user = null;

const live = new LiveFeed({
    onMessage: (message) => {
        todos.applyLive(message);
        jobs.applyLive(message);
    },
    onResync: () => todos.refresh(),
    onClosedForGood: () => signedOut("Your session has ended. Please log in again."),
});

function showView(name) {
    show(byId("loading"), false);
    show(byId("login-view"), name === "login");
    show(byId("todo-view"), name === "todos");
    show(byId("who"), name === "todos");
}

function signedIn(who) {
    user = who;
    byId("who-name").textContent = who.username;
    showView("todos");
    if (location.hash !== "#todos") history.pushState(null, "", "#todos");
    live.start();
    todos.load();
    byId("add-content").focus();
}

/** Forget everything private on the page, then show the login form. */
function signedOut(message = "") {
    user = null;
    live.stop();
    jobs.stopWatching();
    todos.clear();
    byId("who-name").textContent = "";
    for (const id of ["export-status", "import-status", "purge-status"]) byId(id).textContent = "";
    byId("import-errors").replaceChildren();
    show(byId("export-download"), false);
    showView("login");
    if (location.hash !== "#login") history.replaceState(null, "", "#login");
    if (message) warn(message);
    byId("login-username").focus();
}

async function start() {
    try {
        const who = await currentUser();
        if (who) signedIn(who);
        else signedOut();
    } catch (error) {
        showView("login");
        warn(describe(error, "check your session"));
    }
}

whenSignedOut(() => {
    if (user) signedOut("Your session has ended. Please log in again.");
});
setUpLoginForm(signedIn);
todos.setUpList();
jobs.setUpJobs();

byId("logout").addEventListener("click", async () => {
    try {
        await logOut();
    } catch (error) {
        if (error.status !== 401) {
            warn(describe(error, "log out"));
            return;
        }
    }
    clearWarning();
    signedOut();
    say("You are logged out.");
});

// Back/forward, or a page restored from the back-forward cache: show only what the session
// still allows.
window.addEventListener("popstate", () => {
    if (!user) signedOut();
    else if (location.hash !== "#todos") history.replaceState(null, "", "#todos");
});
window.addEventListener("pageshow", (event) => {
    if (event.persisted) start();
});
window.addEventListener("online", () => { if (user) todos.refresh(); });

start();
