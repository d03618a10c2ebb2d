// Live notifications on /ws, authenticated by the session cookie. A dropped socket reconnects
// after a randomised, growing delay (so a restart of every instance is not met by every page
// at once); each reconnect asks the caller to refetch, since messages are not replayed.

const MAX_DELAY_MS = 15000;

export class LiveFeed {
    constructor({ onMessage, onResync, onClosedForGood }) {
        this.onMessage = onMessage;
        this.onResync = onResync;
        this.onClosedForGood = onClosedForGood;
        this.socket = null;
        this.attempts = 0;
        this.timer = 0;
        this.stopped = true;
        this.everSubscribed = false;
    }

    start() {
        this.stopped = false;
        this.connect();
    }

    stop() {
        this.stopped = true;
        clearTimeout(this.timer);
        this.socket?.close(1000);
        this.socket = null;
        this.everSubscribed = false;
        this.attempts = 0;
    }

    connect() {
        const scheme = location.protocol === "https:" ? "wss" : "ws";
        const socket = new WebSocket(`${scheme}://${location.host}/ws`);
        this.socket = socket;
        socket.addEventListener("message", (event) => this.receive(event));
        socket.addEventListener("close", (event) => this.closed(socket, event));
    }

    receive(event) {
        let message;
        try {
            message = JSON.parse(event.data);
        } catch {
            return;
        }
        if (message.type === "hello") {
            this.attempts = 0;
            // Anything may have changed while we were not subscribed.
            if (this.everSubscribed) this.onResync();
            this.everSubscribed = true;
        } else if (message.type === "resync") {
            this.onResync();
        } else {
            this.onMessage(message);
        }
    }

    closed(socket, event) {
        if (this.stopped || socket !== this.socket) return;
        if (event.code === 1008 && /revoked|expired/.test(event.reason)) {
            this.onClosedForGood();
            return;
        }
        const ceiling = Math.min(MAX_DELAY_MS, 500 * 2 ** this.attempts);
        this.attempts += 1;
        const delay = ceiling / 2 + Math.random() * (ceiling / 2);
        this.timer = setTimeout(() => this.connect(), delay);
    }
}
