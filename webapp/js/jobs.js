// Jobs: export (JSON or CSV) with a progress bar and a download link when done, import a file
// with upload and job progress and the rejected rows by line, purge old finished todos.
// Progress comes from the live job messages; a slow poll covers a socket that is down.

import { request, upload } from "./api.js";
import { byId, el, show } from "./dom.js";
import { describe } from "./errors.js";
import { say, warn } from "./notice.js";

const POLL_MS = 2000;
const watchers = new Map();  // job id -> function(job) that shows it

function watch(job, onChange) {
    watchers.set(job.id, onChange);
    onChange(job);
    const poll = async () => {
        if (!watchers.has(job.id)) return;
        try {
            const now = await request("GET", `/jobs/${job.id}`);
            watchers.get(job.id)?.(now);
        } catch (error) {
            if (error.status === 401) return;
        }
        if (watchers.has(job.id)) setTimeout(poll, POLL_MS);
    };
    setTimeout(poll, POLL_MS);
}

/** A live `job` message (this tab's jobs, or another's). */
export function applyLive(message) {
    if (message.type === "job") watchers.get(message.job.id)?.(message.job);
}

export function stopWatching() {
    watchers.clear();
}

function setProgress(bar, job) {
    show(bar);
    const { done, total } = job.progress ?? {};
    if (job.status === "done") {
        bar.max = 1;
        bar.value = 1;
    } else if (total) {
        bar.max = total;
        bar.value = Math.min(done, total);
    } else {
        bar.removeAttribute("value");  // indeterminate until the worker has counted
    }
}

const finished = (job) => job.status === "done" || job.status === "failed";
const statusText = (job) => ({ queued: "Waiting for a worker…", running: "Working…" }[job.status]
                              ?? job.status);

// The job `start()` creates, or null once its refusal is shown (a 401 shows the log-in form).
async function startJob(start, action, bar, status) {
    try {
        return await start();
    } catch (error) {
        status.textContent = "";
        show(bar, false);
        if (error.status !== 401) warn(describe(error, action));
        return null;
    }
}

// Shows `job`'s progress and state in `bar` and `status` until it ends; `onDone(job)` then shows
// what it made (`name`, "export" or "import", is for the sentence of a failure).
function follow(job, name, bar, status, onDone) {
    watch(job, (now) => {
        setProgress(bar, now);
        if (!finished(now)) {
            status.textContent = statusText(now);
            return;
        }
        watchers.delete(now.id);
        if (now.status === "failed") {
            status.textContent = `The ${name} failed: ${now.error ?? "unknown reason"}.`;
            return;
        }
        onDone(now);
    });
}

function setUpExport() {
    const form = byId("export-form");
    const bar = byId("export-progress");
    const status = byId("export-status");
    const link = byId("export-download");
    form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const format = byId("export-format").value;
        show(link, false);
        status.textContent = "Starting the export…";
        const job = await startJob(
            () => request("POST", "/jobs", { json: { type: "export", format } }),
            "start the export", bar, status);
        if (!job) return;
        follow(job, "export", bar, status, (now) => {
            const rows = now.result?.rows ?? 0;
            status.textContent = `Export ready: ${rows} ${rows === 1 ? "todo" : "todos"}.`;
            link.href = now.result_url;
            link.setAttribute("download", `todos-${now.id}.${format}`);
            link.textContent = `Download todos-${now.id}.${format}`;
            show(link);
            say("Your export is ready to download.");
        });
    });
}

function showRejected(list, result) {
    const rows = result?.errors ?? [];
    list.replaceChildren(...rows.map((row) => el("li", {
        text: `Line ${row.line} (row ${row.row}): ${row.error}`,
    })));
    show(list, rows.length > 0);
}

function setUpImport() {
    const form = byId("import-form");
    const bar = byId("import-progress");
    const status = byId("import-status");
    const rejected = byId("import-errors");
    form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const file = byId("import-file").files[0];
        if (!file) {
            warn("Choose a JSON or CSV file to import first.");
            return;
        }
        show(rejected, false);
        const body = new FormData();
        body.append("type", "import");
        body.append("file", file, file.name);
        status.textContent = "Uploading…";
        show(bar);
        bar.max = 1;
        const job = await startJob(
            () => upload("/jobs", body, (share) => { bar.value = share; }),
            "import the file", bar, status);
        if (!job) return;
        follow(job, "import", bar, status, (now) => {
            const { imported = 0, duplicates = 0, rejected: bad = 0 } = now.result ?? {};
            status.textContent = `Imported ${imported}, ${duplicates} already there, `
                + `${bad} rejected.`;
            showRejected(rejected, now.result);
        });
    });
}

function setUpPurge() {
    const form = byId("purge-form");
    const status = byId("purge-status");
    form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const days = Number(byId("purge-days").value);
        if (!Number.isInteger(days) || days < 0 || days > 3650) {
            warn("The number of days must be a whole number from 0 to 3650.");
            return;
        }
        status.textContent = "Purging…";
        let job;
        try {
            job = await request("POST", "/jobs", { json: { type: "purge", older_than_days: days } });
        } catch (error) {
            status.textContent = "";
            if (error.status !== 401) warn(describe(error, "start the purge"));
            return;
        }
        watch(job, (now) => {
            if (!finished(now)) return;
            watchers.delete(now.id);
            status.textContent = now.status === "failed"
                ? `The purge failed: ${now.error ?? "unknown reason"}.`
                : `Deleted ${now.result?.deleted ?? 0} finished todos.`;
        });
    });
}

export function setUpJobs() {
    setUpExport();
    setUpImport();
    setUpPurge();
}
