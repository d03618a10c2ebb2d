// The API over fetch, authenticated by the HttpOnly session cookie the browser sends itself.
// Page script never sees a token; it only copies the readable _xsrf cookie into X-XSRFToken
// on requests that change something (the double-submit CSRF defence).

import { ApiError } from "./errors.js";

let onSignedOut = () => {};

/** What to do when any request (except those that expect it) answers 401. */
export function whenSignedOut(handler) {
    onSignedOut = handler;
}

export function xsrfToken() {
    const found = document.cookie.split("; ").find((part) => part.startsWith("_xsrf="));
    return found ? decodeURIComponent(found.slice("_xsrf=".length)) : "";
}

/** A same-origin path for a link the API gave (its `next` is an absolute URL). */
export function localPath(url) {
    const parsed = new URL(url, location.href);
    return parsed.pathname + parsed.search;
}

/**
 * `method` `path` with an optional JSON body; resolves to the parsed reply (null for 204) and
 * rejects with an ApiError. `expect401`: a 401 is the caller's business (login, session check).
 */
export async function request(method, path, { json, body, headers: extra = {}, expect401 = false } = {}) {
    const headers = { Accept: "application/json", ...extra };
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (json !== undefined) {
        init.body = JSON.stringify(json);
        headers["Content-Type"] = "application/json";
    } else if (body !== undefined) {
        init.body = body;
    }
    if (method !== "GET" && method !== "HEAD") headers["X-XSRFToken"] = xsrfToken();
    let response;
    try {
        response = await fetch(path, init);
    } catch {
        throw ApiError.offline();
    }
    let data = null;
    if (response.status !== 204) {
        try {
            data = await response.json();
        } catch {
            data = null;
        }
    }
    if (!response.ok) {
        const error = ApiError.from(response, data);
        if (error.status === 401 && !expect401) onSignedOut(error);
        throw error;
    }
    return data;
}

/** POST a multipart body with upload progress (fetch cannot report it): XMLHttpRequest. */
export function upload(path, form, onProgress) {
    return new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        xhr.open("POST", path);
        xhr.responseType = "json";
        xhr.setRequestHeader("Accept", "application/json");
        xhr.setRequestHeader("X-XSRFToken", xsrfToken());
        xhr.upload.addEventListener("progress", (event) => {
            if (event.lengthComputable) onProgress(event.loaded / event.total);
        });
        xhr.addEventListener("error", () => reject(ApiError.offline()));
        xhr.addEventListener("load", () => {
            if (xhr.status >= 200 && xhr.status < 300) return resolve(xhr.response);
            const retry = Number.parseInt(xhr.getResponseHeader("Retry-After") ?? "", 10);
            const error = new ApiError(xhr.status, xhr.response?.error?.message ?? "",
                                       Number.isFinite(retry) ? retry : null);
            if (error.status === 401) onSignedOut(error);
            reject(error);
        });
        xhr.send(form);
    });
}
