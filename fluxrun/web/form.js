// A tool's form, generated from its Tool/Detail description (SPEC.md section 8): one
// labelled control per ITEM, its help text and range, its default, a select for options;
// checks from min/max/step/options before sending, and the server's own messages by the
// field they name.
import { helpText, labelText } from "./labels.js";

const NUMERIC_TYPES = new Set(["number", "float"]);

function numberOrNull(text) {
  if (text === undefined || text === null || String(text).trim() === "") return null;
  const value = Number(text);
  return Number.isFinite(value) ? value : null;
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  if (text) node.textContent = text;
  return node;
}

function sentence(text) {
  const trimmed = String(text).trim();
  if (!trimmed) return "";
  const capital = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

/** "From 64 to 2048, in steps of 16. Default: 1024." for the help line. */
export function rangeText(item) {
  const parts = [];
  const min = numberOrNull(item.min);
  const max = numberOrNull(item.max);
  const step = numberOrNull(item.step);
  if (NUMERIC_TYPES.has(item.type) && (min !== null || max !== null)) {
    let range = min !== null && max !== null ? `From ${min} to ${max}` : min !== null ? `At least ${min}` : `At most ${max}`;
    if (step !== null && step > 1) range += `, in steps of ${step}`;
    parts.push(`${range}.`);
  }
  if (item.default !== undefined && item.default !== null && String(item.default) !== "" && item.type !== "textarea") {
    const option = (item.options || []).find((o) => String(o.value) === String(item.default));
    parts.push(`Default: ${option ? option.label : item.default}.`);
  }
  return parts.join(" ");
}

/** What is wrong with one value, in the server's words ("must be ..."), or "" when nothing. */
export function checkValue(item, raw, badInput = false) {
  const text = String(raw ?? "").trim();
  if (badInput) return "must be a number";
  if (text === "") return item.required ? "is required and must not be empty" : "";
  if (NUMERIC_TYPES.has(item.type)) {
    const value = Number(text);
    if (!Number.isFinite(value)) return "must be a number";
    const min = numberOrNull(item.min);
    const max = numberOrNull(item.max);
    const step = numberOrNull(item.step);
    const wholeSteps = step !== null && Number.isInteger(step);
    if (item.type === "number" && wholeSteps && !Number.isInteger(value)) return "must be an integer";
    if ((min !== null && value < min) || (max !== null && value > max)) {
      return `must be between ${min ?? "-∞"} and ${max ?? "∞"} (got ${text})`;
    }
    if (wholeSteps && step > 1 && Number.isInteger(value)) {
      const base = min ?? 0;
      if ((value - base) % step !== 0) {
        return base % step === 0 ? `must be a multiple of ${step} (got ${text})` : `must be ${base} plus a multiple of ${step}`;
      }
    }
  }
  if (item.options && item.options.length && !item.options.some((o) => String(o.value) === text)) {
    return `must be one of ${item.options.map((o) => o.value).join(", ")}`;
  }
  return "";
}

export class ToolForm {
  constructor(container, tool) {
    this.container = container;
    this.tool = tool;
    this.fields = new Map(); // item id -> {item, control, error}
    container.replaceChildren(...(tool.parameters || []).map((group) => this.group(group)));
  }

  group(group) {
    const fieldset = element("fieldset");
    fieldset.append(element("legend", {}, group.title || "Inputs"));
    for (const item of group.items || []) fieldset.append(this.field(item));
    return fieldset;
  }

  field(item) {
    const id = `in-${item.id}`;
    const wrapper = element("div", { class: "field", "data-field": item.id });
    const label = element("label", { for: id }, labelText(item));
    if (item.required) label.append(element("span", { class: "required" }, " (required)"));
    const control = this.control(item, id);
    const help = [sentence(helpText(item)), rangeText(item)].filter(Boolean).join(" ");
    const described = [];
    wrapper.append(label, control);
    if (help) {
      wrapper.append(element("p", { class: "help", id: `${id}-help` }, help));
      described.push(`${id}-help`);
    }
    const error = element("p", { class: "field-error", id: `${id}-error`, hidden: true });
    wrapper.append(error);
    described.push(`${id}-error`);
    control.setAttribute("aria-describedby", described.join(" "));
    this.fields.set(item.id, { item, control, error, label: labelText(item) });
    return wrapper;
  }

  control(item, id) {
    const common = { id, name: item.id, required: Boolean(item.required) };
    if (item.options && item.options.length) {
      const select = element("select", common);
      for (const option of item.options) select.append(element("option", { value: option.value }, option.label));
      select.value = String(item.default ?? "");
      return select;
    }
    if (item.type === "textarea") {
      const area = element("textarea", { ...common, rows: 4, spellcheck: "true" });
      area.value = String(item.default ?? "");
      return area;
    }
    if (NUMERIC_TYPES.has(item.type)) {
      const step = numberOrNull(item.step);
      const input = element("input", {
        ...common,
        type: "number",
        inputmode: item.type === "float" || (step !== null && !Number.isInteger(step)) ? "decimal" : "numeric",
        min: item.min === "" ? null : item.min,
        max: item.max === "" ? null : item.max,
        step: step !== null ? String(step) : "any",
      });
      input.value = String(item.default ?? "");
      return input;
    }
    const input = element("input", { ...common, type: "text", autocomplete: "off", spellcheck: "false" });
    if (item.id === "seed") input.setAttribute("inputmode", "numeric");
    input.value = String(item.default ?? "");
    return input;
  }

  /** The Run body: every field with a value (an empty one takes the server's default). */
  values() {
    const body = {};
    for (const [id, { control }] of this.fields) {
      const value = control.value.trim();
      if (value !== "") body[id] = value;
    }
    return body;
  }

  /** The task's parameters back in the form (history: same seed, same image). */
  fill(parameters) {
    for (const [id, { control }] of this.fields) {
      if (parameters && Object.prototype.hasOwnProperty.call(parameters, id)) control.value = String(parameters[id]);
    }
    this.clearErrors();
  }

  /** Client-side checks; the problems found, as [{id, message}]. */
  check() {
    const problems = [];
    for (const [id, { item, control }] of this.fields) {
      const badInput = Boolean(control.validity && control.validity.badInput);
      const message = checkValue(item, control.value, badInput);
      if (message) problems.push({ id, message });
    }
    return problems;
  }

  clearErrors() {
    for (const { control, error } of this.fields.values()) {
      control.removeAttribute("aria-invalid");
      error.hidden = true;
      error.textContent = "";
    }
  }

  showError(id, message) {
    const field = this.fields.get(id);
    if (!field) return false;
    field.control.setAttribute("aria-invalid", "true");
    field.error.textContent = sentence(message);
    field.error.hidden = false;
    return true;
  }

  /** The server's "field: rule" message by its field; false when it names none of ours. */
  showServerError(message) {
    const match = /^([A-Za-z0-9_]+): ([\s\S]+)$/.exec(String(message));
    return Boolean(match) && this.showError(match[1], match[2]);
  }

  focusFirstError() {
    for (const { control } of this.fields.values()) {
      if (control.getAttribute("aria-invalid") === "true") {
        control.focus();
        return;
      }
    }
  }
}
