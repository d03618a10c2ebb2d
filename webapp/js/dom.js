// Small DOM helpers. Data only ever reaches the page as text (textContent, text nodes,
// attribute values), never as HTML: todo content cannot become markup or script.

/** An element with attributes and children; strings become text nodes. */
export function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
        if (name === "class") node.className = value;
        else if (name === "text") node.textContent = value;
        else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
        else if (value === true) node.setAttribute(name, "");
        else if (value !== false && value != null) node.setAttribute(name, String(value));
    }
    node.append(...children);
    return node;
}

export const byId = (id) => document.getElementById(id);

/** Show or hide an element (the `hidden` attribute: no inline style, which the CSP forbids). */
export function show(node, visible = true) {
    node.hidden = !visible;
}

/** A random key for Idempotency-Key; randomUUID needs a secure context, plain http may not be. */
export function randomKey() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
