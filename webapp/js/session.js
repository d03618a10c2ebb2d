// Logging in, registering and out: the session is an HttpOnly cookie set by POST /session.

import { request } from "./api.js";
import { byId } from "./dom.js";
import { describe, seconds } from "./errors.js";
import { warn, clearWarning } from "./notice.js";

/** The signed-in user ({username, user_id, expires_at}), or null. Also (re)sets _xsrf. */
export async function currentUser() {
    try {
        return await request("GET", "/session", { expect401: true });
    } catch (error) {
        if (error.status === 401) return null;
        throw error;
    }
}

const LOGIN_FAILED = {
    401: "Wrong username or password.",
    // The same throttle guards the API's tokens: too many wrong passwords lock the username.
    429: (error) => "Too many attempts to log in. Try again in "
        + `${error.retryAfter ? seconds(error.retryAfter) : "a minute"}.`,
};

/** Wires the login form; `onSignedIn(user)` runs once a session exists. */
export function setUpLoginForm(onSignedIn) {
    const form = byId("login-form");
    const credentials = () => ({
        username: byId("login-username").value.trim(),
        password: byId("login-password").value,
    });
    const busy = (on) => form.querySelectorAll("button").forEach((b) => { b.disabled = on; });

    async function logIn(fields) {
        await request("POST", "/session", { json: fields, expect401: true });
        byId("login-password").value = "";
        clearWarning();
        onSignedIn(await currentUser());
    }

    // Logs in, or says why not; the form's buttons work again either way.
    async function logInOrSay(fields) {
        try {
            await logIn(fields);
        } catch (error) {
            warn(describe(error, "log in", LOGIN_FAILED));
        } finally {
            busy(false);
        }
    }

    form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const fields = credentials();
        if (!fields.username || !fields.password) {
            warn("Please enter your username and password.");
            return;
        }
        busy(true);
        await logInOrSay(fields);
    });

    byId("register").addEventListener("click", async () => {
        const fields = credentials();
        busy(true);
        try {
            await request("POST", "/users", { json: fields, expect401: true });
        } catch (error) {
            warn(describe(error, "create the account", {
                409: `The username “${fields.username}” is already taken. Choose another one.`,
            }));
            busy(false);
            return;
        }
        await logInOrSay(fields);
    });
}

export async function logOut() {
    await request("DELETE", "/session", { expect401: true });
}
