// The list: one page at a time, newest first, following the API's `next` links ("older") and
// back; add, edit in place, finish, delete with optimistic updates that roll back, with a
// sentence, when the API refuses. Live messages patch the page; `refresh` reloads it.

import { localPath, request } from "./api.js";
import { byId, el, randomKey, show } from "./dom.js";
import { describe } from "./errors.js";
import { say, warn } from "./notice.js";

const PAGE_SIZE = 10;
const FILTERS = { all: "", open: "&finished=false", finished: "&finished=true" };

const state = {
    filter: "all",
    pages: [],        // the URL of each page visited, the first one first: "newer" pops
    next: null,       // the API's link to the older page, or null
    todos: [],        // what the page shows, newest first
    editing: null,    // the id being edited in place
    draft: null,      // what was typed in the editor so far
    loadSeq: 0,       // a reply to an older load is dropped
};

const list = () => byId("todo-list");
const firstPage = () => `/todo?limit=${PAGE_SIZE}${FILTERS[state.filter]}`;
const matchesFilter = (todo) =>
    state.filter === "all" || todo.is_finished === (state.filter === "finished");

/** Load the page at `url` (the first page by default) and show it. */
export async function load(url = null) {
    if (url === null) state.pages = [firstPage()];
    const seq = ++state.loadSeq;
    const pageUrl = state.pages[state.pages.length - 1];
    try {
        const page = await request("GET", pageUrl);
        if (seq !== state.loadSeq) return;
        state.todos = page.data;
        state.next = page.next;
        state.editing = null;
        render();
    } catch (error) {
        if (seq === state.loadSeq && error.status !== 401) warn(describe(error, "load your todos"));
    }
}

/** Reload the page being shown (after a resync, a reconnect, a job that changed many). */
export const refresh = () => load(state.pages.length ? state.pages.at(-1) : null);

export function clear() {
    state.todos = [];
    state.pages = [];
    state.next = null;
    state.editing = null;
    state.loadSeq += 1;
    list().replaceChildren();
}

/** Where the keyboard focus was in the list, to put it back on the same control afterwards. */
function focusedControl() {
    const active = document.activeElement;
    const li = active?.closest?.("#todo-list li");
    return li && active.dataset.focus ? { id: li.dataset.id, key: active.dataset.focus } : null;
}

function render(focus = focusedControl()) {
    list().replaceChildren(...state.todos.map(item));
    if (focus) {
        const selector = `li[data-id="${CSS.escape(focus.id)}"] [data-focus="${focus.key}"]`;
        list().querySelector(selector)?.focus();
    }
    show(byId("empty"), state.todos.length === 0);
    byId("newer").disabled = state.pages.length <= 1;
    byId("older").disabled = !state.next;
    byId("page-label").textContent = `Page ${state.pages.length}`;
}

function item(todo) {
    const label = `${todo.content}`;
    const checkbox = el("input", {
        type: "checkbox", id: `done-${todo.id}`, checked: todo.is_finished, disabled: !!todo.pending,
        "data-focus": "done",
        onchange: (event) => setFinished(todo.id, event.target.checked),
    });
    const text = el("label", { for: `done-${todo.id}`, class: "content", text: label });
    const when = new Date(todo.created_at);
    const meta = el("time", { datetime: todo.created_at, class: "meta",
                              text: Number.isNaN(when.valueOf()) ? "" : when.toLocaleString() });
    const edit = el("button", { type: "button", class: "quiet", "aria-label": `Edit “${label}”`,
                                disabled: !!todo.pending, "data-focus": "edit",
                                text: "Edit", onclick: () => startEdit(todo.id) });
    const remove = el("button", { type: "button", class: "quiet danger",
                                  "aria-label": `Delete “${label}”`, text: "Delete",
                                  disabled: !!todo.pending, "data-focus": "delete",
                                  onclick: () => remove_(todo.id) });
    const li = el("li", { class: todo.is_finished ? "todo finished" : "todo",
                          "data-id": todo.id },
                  checkbox, el("div", { class: "body" }, text, meta),
                  el("div", { class: "actions" }, edit, remove));
    if (todo.pending) li.classList.add("pending");
    if (state.editing === todo.id) li.replaceChildren(editor(todo));
    return li;
}

function editor(todo) {
    // What was typed survives a re-render (a live change to another todo redraws the list).
    const input = el("input", { value: state.draft ?? todo.content, maxlength: 1000,
                                id: `edit-${todo.id}`, "aria-label": "Edit todo",
                                oninput: (event) => { state.draft = event.target.value; } });
    const form = el("form", { class: "edit", novalidate: true },
                    input,
                    el("button", { type: "submit", text: "Save" }),
                    el("button", { type: "button", class: "secondary", text: "Cancel",
                                   onclick: () => stopEdit(todo.id) }));
    form.addEventListener("submit", (event) => {
        event.preventDefault();
        saveEdit(todo.id, input.value);
    });
    input.addEventListener("keydown", (event) => {
        if (event.key === "Escape") stopEdit(todo.id);
    });
    queueMicrotask(() => {
        input.focus();
        input.setSelectionRange(input.value.length, input.value.length);
    });
    return form;
}

const find = (id) => state.todos.findIndex((t) => t.id === id);

function startEdit(id) {
    state.editing = id;
    state.draft = null;
    render();
}

function stopEdit(id) {
    state.editing = null;
    render({ id, key: "edit" });
}

/** Apply `change` to the todo at once, send `send()`, and undo the change if it fails. */
async function optimistic(id, change, send, action, focus = undefined) {
    const index = find(id);
    if (index < 0) return;
    const before = state.todos[index];
    state.todos[index] = { ...before, ...change };
    render(focus);
    try {
        const saved = await send();
        const now = find(id);
        if (now >= 0) {
            state.todos[now] = saved;
            if (!matchesFilter(saved)) state.todos.splice(now, 1);
            render();
        }
    } catch (error) {
        const now = find(id);
        if (now >= 0) state.todos[now] = before;
        render();
        if (error.status !== 401) warn(`${describe(error, action)} The change was undone.`);
    }
}

function saveEdit(id, value) {
    const content = value.trim();
    if (!content) {
        warn("A todo cannot be empty. Type something, or delete it instead.");
        return;
    }
    state.editing = null;
    optimistic(id, { content },
               () => request("PATCH", `/todo/${id}`, { json: { content } }), "save the change",
               { id, key: "edit" });
}

function setFinished(id, finished) {
    optimistic(
        id, { is_finished: finished },
        () => (finished ? request("PUT", `/todo/${id}/finish`)
                        : request("PATCH", `/todo/${id}`, { json: { is_finished: false } })),
        finished ? "finish the todo" : "reopen the todo");
}

async function remove_(id) {
    const index = find(id);
    if (index < 0) return;
    const [removed] = state.todos.splice(index, 1);
    // The focus moves to the next todo (or the one before), else to the new-todo field.
    const neighbour = state.todos[index] ?? state.todos[index - 1];
    render(neighbour ? { id: neighbour.id, key: "delete" } : null);
    if (!neighbour) byId("add-content").focus();
    try {
        await request("DELETE", `/todo/${id}`);
        say(`Deleted “${removed.content}”.`);
    } catch (error) {
        if (error.status === 404) return;  // already gone: what we show is right
        state.todos.splice(Math.min(index, state.todos.length), 0, removed);
        render();
        if (error.status !== 401) warn(`${describe(error, "delete the todo")} It is back in the list.`);
    }
}

async function add(content) {
    const pending = { id: `pending-${randomKey()}`, content, created_at: new Date().toISOString(),
                      is_finished: false, finished_at: null, pending: true };
    const showHere = state.pages.length === 1 && state.filter !== "finished";
    if (showHere) {
        state.todos.unshift(pending);
        render();
    }
    try {
        // The key makes a retry after a lost reply safe: the server creates the todo once.
        const created = await request("POST", "/todo", {
            json: { content }, headers: { "Idempotency-Key": randomKey() } });
        const index = find(pending.id);
        const already = find(created.id);  // the live message may have come first
        if (index >= 0) {
            if (already >= 0) state.todos.splice(index, 1);
            else state.todos[index] = created;
        }
        render();
        say(`Added “${created.content}”.`);
        return true;
    } catch (error) {
        const index = find(pending.id);
        if (index >= 0) state.todos.splice(index, 1);
        render();
        if (error.status !== 401) warn(describe(error, "add the todo"));
        return false;
    }
}

/** A live message about one todo (from this tab or any other). */
export function applyLive(message) {
    if (message.type === "todos") {
        refresh();
        return;
    }
    if (message.type !== "todo") return;
    const todo = message.todo;
    const index = find(todo.id);
    if (message.action === "deleted") {
        if (index >= 0 && state.editing !== todo.id) {
            state.todos.splice(index, 1);
            render();
        }
    } else if (message.action === "created") {
        if (index >= 0 || state.pages.length !== 1 || !matchesFilter(todo)) return;
        // Most likely our own add, whose reply is on its way: it takes the placeholder's place
        // rather than showing twice for a moment.
        const placeholder = state.todos.findIndex((t) => t.pending && t.content === todo.content);
        if (placeholder >= 0) state.todos[placeholder] = todo;
        else state.todos.unshift(todo);
        render();
    } else if (index >= 0 && state.editing !== todo.id) {
        if (matchesFilter(todo)) state.todos[index] = todo;
        else state.todos.splice(index, 1);
        render();
    }
}

export function setUpList() {
    byId("add-form").addEventListener("submit", async (event) => {
        event.preventDefault();
        const input = byId("add-content");
        const content = input.value.trim();
        if (!content) {
            warn("Type what needs doing first.");
            input.focus();
            return;
        }
        input.value = "";
        if (!(await add(content)) && !input.value) input.value = content;
    });
    for (const radio of document.querySelectorAll('input[name="filter"]')) {
        radio.addEventListener("change", () => {
            state.filter = radio.value;
            load();
        });
    }
    byId("older").addEventListener("click", () => {
        if (!state.next) return;
        state.pages.push(localPath(state.next));
        load(state.pages.at(-1));
    });
    byId("newer").addEventListener("click", () => {
        if (state.pages.length <= 1) return;
        state.pages.pop();
        load(state.pages.at(-1));
    });
}
