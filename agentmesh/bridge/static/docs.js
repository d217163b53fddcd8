// Renders the operations of /openapi.json and lets you try them. No dependencies, no HTML parsing:
// every string from the spec or a response is inserted as text.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

function resolve(spec, schema) {
  const ref = schema && schema.$ref;
  return ref ? spec.components.schemas[ref.split("/").pop()] : schema;
}

// A small example body: the first few fields of the request message, one level of nesting.
function example(spec, schema, depth) {
  schema = resolve(spec, schema) || {};
  if (depth > 2) return undefined;
  const choice = schema.anyOf || schema.oneOf;
  if (choice) return example(spec, choice[0], depth);
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  if (type === "object" && schema.properties) {
    const out = {};
    for (const [name, prop] of Object.entries(schema.properties)) {
      const v = example(spec, prop, depth + 1);
      if (v !== undefined && Object.keys(out).length < 3) out[name] = v;
    }
    return out;
  }
  if (type === "array") return [];
  if (type === "string") return schema.enum ? schema.enum[0] : "";
  if (type === "integer" || type === "number") return 0;
  if (type === "boolean") return false;
  return undefined;
}

async function send(method, path, body, out) {
  const headers = { "Accept": "application/json" };
  const token = document.getElementById("token").value.trim();
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== null) headers["Content-Type"] = "application/json";
  out.textContent = "…";
  try {
    const res = await fetch(path, { method, headers, body: body === null ? undefined : body });
    out.textContent = res.status + " " + res.statusText + "\n\n" + await res.text();
  } catch (err) {
    out.textContent = String(err);
  }
}

function operation(spec, path, method, op) {
  const verb = el("span", { class: "verb verb-" + method }, method.toUpperCase());
  const box = el("details", {}, el("summary", {}, verb, " " + path + "  ", el("small", {}, op.summary || "")));
  if (op.description) box.append(el("p", { class: "desc" }, op.description));
  const params = (op.parameters || []).map((p) => {
    const input = el("input", { "data-in": p.in, "data-name": p.name, placeholder: p.name });
    box.append(el("label", {}, p.in + " " + p.name + " ", input), el("br"));
    return input;
  });
  const media = op.requestBody && op.requestBody.content["application/json"];
  const body = media ? el("textarea", {}) : null;
  if (body) {
    body.value = JSON.stringify(example(spec, media.schema, 0) || {}, null, 2);
    box.append(body);
  }
  const out = el("pre", {});
  const button = el("button", { type: "button" }, "Send");
  button.addEventListener("click", () => {
    let url = path;
    const query = new URLSearchParams();
    for (const input of params) {
      if (input.dataset.in === "path") url = url.replace("{" + input.dataset.name + "}", encodeURIComponent(input.value));
      else if (input.value) query.append(input.dataset.name, input.value);
    }
    if ([...query].length) url += "?" + query;
    send(method.toUpperCase(), url, body ? body.value : null, out);
  });
  box.append(button, out);
  return box;
}

async function main() {
  const root = document.getElementById("ops");
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("title").textContent = spec.info.title;
  document.getElementById("version").textContent = "version " + spec.info.version;
  root.textContent = "";
  root.append(el("p", { class: "desc" }, spec.info.description || ""));
  const byTag = new Map();
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(spec, path, method, op));
    }
  }
  for (const [tag, ops] of byTag) root.append(el("h2", {}, tag), ...ops);
}

main().catch((err) => { document.getElementById("ops").textContent = "Cannot load /openapi.json: " + err; });
