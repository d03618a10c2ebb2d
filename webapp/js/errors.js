// Every failure the API can give, as a sentence for a person: never raw JSON.

export class ApiError extends Error {
    constructor(status, message, retryAfter = null) {
        super(message);
        this.status = status;          // 0: the request never got an answer
        this.retryAfter = retryAfter;  // seconds, from Retry-After, when given
    }

    static offline() {
        return new ApiError(0, "offline");
    }

    /** From a failed fetch Response and its parsed body (null when it was not JSON). */
    static from(response, body) {
        const message = body?.error?.message ?? response.statusText ?? "";
        const retry = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
        return new ApiError(response.status, message, Number.isFinite(retry) ? retry : null);
    }
}

const capitalised = (text) => (text ? text[0].toUpperCase() + text.slice(1) : text);
export const seconds = (n) => (n === 1 ? "1 second" : `${n} seconds`);

/**
 * A sentence for `error`. `action` names what failed ("add the todo"); `overrides` maps a
 * status to the sentence that fits the place (a 401 on the login form is a wrong password),
 * or to a function of the error that returns it.
 */
export function describe(error, action = "do that", overrides = {}) {
    if (!(error instanceof ApiError)) return `Could not ${action}: something unexpected went wrong.`;
    if (error.status in overrides) {
        const override = overrides[error.status];
        return typeof override === "function" ? override(error) : override;
    }
    const wait = error.retryAfter ? ` Try again in ${seconds(error.retryAfter)}.` : " Try again shortly.";
    switch (error.status) {
        case 0:
            return navigator.onLine === false
                ? `You are offline, so we could not ${action}. Check your connection and try again.`
                : `Could not reach the server to ${action}. Check your connection and try again.`;
        case 400:
        case 422:
            return `Could not ${action}: ${error.message || "the input was not accepted"}.`;
        case 401:
            return "Your session has ended. Please log in again.";
        case 403:
            return `The server refused to ${action} (security check failed). Reload the page and try again.`;
        case 404:
            return `Could not ${action}: it no longer exists (perhaps it was deleted elsewhere).`;
        case 409:
            return `Could not ${action}: ${error.message || "it conflicts with the current state"}.`;
        case 410:
            return `Could not ${action}: the file has expired. Start a new export.`;
        case 413:
            return `Could not ${action}: it is too large. ${capitalised(error.message)}.`;
        case 415:
            return `Could not ${action}: the server does not accept that kind of data.`;
        case 429:
            return `Too many requests, so we could not ${action}.${wait}`;
        case 503:
            return `The service is briefly unavailable, so we could not ${action}.${wait}`;
        default:
            if (error.status >= 500) return `Something went wrong on the server, so we could not ${action}.${wait}`;
            return `Could not ${action} (error ${error.status}).`;
    }
}
