// Fashion-RAG browser extension for ComfyUI's frontend.
//
// - FashionRAGTextGarmentRetrieve: a garment gallery (DOM widget) filled from the node's ui
//   output after a run. Clicking a thumbnail cycles pin -> exclude -> clear; the choice is
//   written into the node's own STRING widgets `pin_ids` / `exclude_ids`, so it is part of the
//   saved workflow and of the next queued prompt (the gallery itself is never serialized).
// - FashionRAGGarmentIndexLoader: a summary of the loaded index (items per category, encoder,
//   build date) from its ui output.
//
// Served as /extensions/<pack folder>/js/fashion_rag.js, hence three levels up to /scripts.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const EXT = "FashionRAG.Gallery";
const RETRIEVE = "FashionRAGTextGarmentRetrieve";
const INDEX_LOADER = "FashionRAGGarmentIndexLoader";
const GALLERY = "fashion_rag_gallery";
const SUMMARY = "fashion_rag_index_summary";
const PIN = "pin_ids";
const EXCLUDE = "exclude_ids";

const CARD_W = 88;
const IMG_H = 117; // 3:4, like the 384x512 garments
const CARD_H = IMG_H + 3 * 14 + 6; // image + score, id and category lines
const GAP = 6;

const STYLE = `
.fashion-rag-gallery { box-sizing: border-box; width: 100%; height: 100%; overflow: auto;
  font: 11px/1.3 sans-serif; color: var(--fg-color, #ddd); padding: 2px 0; }
.fashion-rag-gallery .fr-head { opacity: .75; margin: 0 2px 4px; white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; }
.fashion-rag-gallery .fr-grid { display: flex; flex-wrap: wrap; gap: ${GAP}px; }
.fashion-rag-card { position: relative; box-sizing: border-box; width: ${CARD_W}px;
  height: ${CARD_H}px; padding: 0; margin: 0; cursor: pointer; text-align: left;
  border: 2px solid var(--border-color, #555); border-radius: 5px; overflow: hidden;
  background: var(--comfy-input-bg, #222); color: inherit; font: inherit; }
.fashion-rag-card:hover { border-color: var(--fg-color, #aaa); }
.fashion-rag-card img { display: block; width: 100%; height: ${IMG_H}px; object-fit: contain;
  background: #fff; }
.fashion-rag-card .fr-rank { position: absolute; top: 2px; left: 2px; padding: 0 4px;
  border-radius: 3px; background: rgba(0,0,0,.65); color: #fff; font-weight: bold; }
.fashion-rag-card .fr-badge { position: absolute; top: 2px; right: 2px; padding: 0 4px;
  border-radius: 3px; color: #fff; font-weight: bold; display: none; }
.fashion-rag-card .fr-meta { padding: 0 3px; height: 14px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.fashion-rag-card .fr-score { font-weight: bold; font-variant-numeric: tabular-nums; }
.fashion-rag-card .fr-category { opacity: .75; }
.fashion-rag-card[data-state="pin"] { border-color: #3fb950; }
.fashion-rag-card[data-state="pin"] .fr-badge { display: block; background: #238636; }
.fashion-rag-card[data-state="exclude"] { border-color: #f85149; }
.fashion-rag-card[data-state="exclude"] img { opacity: .35; }
.fashion-rag-card[data-state="exclude"] .fr-badge { display: block; background: #da3633; }
.fashion-rag-gallery .fr-chips { margin-top: 4px; display: flex; flex-wrap: wrap; gap: 4px; }
.fashion-rag-chip { border: 1px solid var(--border-color, #555); border-radius: 9px;
  padding: 0 6px; cursor: pointer; background: var(--comfy-input-bg, #222); color: inherit;
  font: inherit; }
.fashion-rag-chip[data-state="pin"] { border-color: #3fb950; }
.fashion-rag-chip[data-state="exclude"] { border-color: #f85149; }
.fashion-rag-gallery .fr-note { opacity: .75; margin: 2px; }
.fashion-rag-summary { box-sizing: border-box; width: 100%; height: 100%; overflow: hidden;
  font: 11px/1.35 sans-serif; color: var(--fg-color, #ddd); padding: 2px 4px; }
.fashion-rag-summary table { border-collapse: collapse; }
.fashion-rag-summary td { padding: 0 8px 0 0; white-space: nowrap; }
.fashion-rag-summary td.fr-num { text-align: right; font-variant-numeric: tabular-nums; }
.fashion-rag-summary .fr-title { font-weight: bold; }
.fashion-rag-summary .fr-dim { opacity: .7; }
.fashion-rag-summary .fr-warning { color: #e3b341; white-space: normal; margin-top: 2px; }
`;

function injectStyle() {
  if (document.getElementById("fashion-rag-style")) return;
  const style = document.createElement("style");
  style.id = "fashion-rag-style";
  style.textContent = STYLE;
  document.head.appendChild(style);
}

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else node[key] = value;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

// Element.replaceChildren would turn a null into the text "null".
function replaceChildren(parent, ...children) {
  parent.replaceChildren(...children.filter((child) => child != null));
}

// "a, b,,c" (or one per line) -> ["a", "b", "c"], first occurrence wins, as the retrieve node
// reads them (fashion_rag.retrieval.parse_ids); ids are the catalog's own strings.
export function parseIds(text) {
  const seen = new Set();
  for (const part of String(text ?? "").split(/[,\n]/)) {
    const id = part.trim();
    if (id) seen.add(id);
  }
  return [...seen];
}

// V3 ui outputs arrive as lists; tolerate a bare object too.
function first(value) {
  return Array.isArray(value) ? value[0] : value;
}

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// A widget converted to a linked input is fed by another node: writing it would do nothing.
function widgetIsLinked(node, name) {
  return Boolean(node.inputs?.some((input) => input.widget?.name === name && input.link != null));
}

function imageUrl(image) {
  const params = new URLSearchParams({
    filename: image.filename,
    subfolder: image.subfolder ?? "",
    type: image.type ?? "temp",
  });
  return api.apiURL(`/view?${params}${app.getPreviewFormatParam?.() ?? ""}`);
}

function stateOf(node, id) {
  if (parseIds(findWidget(node, PIN)?.value).includes(id)) return "pin";
  if (parseIds(findWidget(node, EXCLUDE)?.value).includes(id)) return "exclude";
  return "none";
}

function writeIds(node, name, ids) {
  const widget = findWidget(node, name);
  if (!widget) return;
  widget.value = ids.join(", ");
  widget.callback?.(widget.value, app.canvas, node);
}

// Put `id` in the list that `state` names and take it out of the other one.
function setState(node, id, state) {
  const pins = parseIds(findWidget(node, PIN)?.value).filter((x) => x !== id);
  const excludes = parseIds(findWidget(node, EXCLUDE)?.value).filter((x) => x !== id);
  if (state === "pin") pins.push(id);
  if (state === "exclude") excludes.push(id);
  writeIds(node, PIN, pins);
  writeIds(node, EXCLUDE, excludes);
  renderGallery(node);
  node.graph?.setDirtyCanvas?.(true, true);
  recordUndoStep();
}

// Make this click one undo step now. ComfyUI's change tracker looks at the graph on mouseup,
// which comes before a click handler runs, so it would see the click only at the next mouseup;
// newer frontends (1.49.6 with ComfyUI 0.33.0) also fold a change made within 50 ms of a look
// into the step before it, and Ctrl+Z then undid two clicks at once. captureCanvasState is the
// newer name of checkState (1.32.9 has only checkState, 1.49.6 warns that it is deprecated).
function recordUndoStep() {
  const tracker = app.extensionManager?.workflow?.activeWorkflow?.changeTracker;
  if (typeof tracker?.captureCanvasState === "function") tracker.captureCanvasState();
  else tracker?.checkState?.();
}

const NEXT_STATE = { none: "pin", pin: "exclude", exclude: "none" };
const BADGE = { pin: "PIN", exclude: "EXCL", none: "" };

function garmentCard(node, garment, image) {
  const id = String(garment.id);
  const score = Number(garment.score);
  const scoreText = Number.isFinite(score) ? score.toFixed(3) : "–";
  const state = stateOf(node, id);
  const card = el(
    "button",
    {
      type: "button",
      className: "fashion-rag-card",
      title:
        `#${garment.rank} ${id} (${garment.category ?? "?"}), score ${scoreText}` +
        (garment.caption ? `\n${garment.caption}` : "") +
        "\nclick: pin → exclude → clear",
      dataset: { garmentId: id, state, rank: String(garment.rank ?? "") },
    },
    [
      image ? el("img", { src: imageUrl(image), alt: id, loading: "lazy", draggable: false }) : null,
      el("span", { className: "fr-rank", text: `#${garment.rank ?? "?"}` }),
      el("span", { className: "fr-badge", text: BADGE[state] }),
      el("div", { className: "fr-meta fr-score", text: scoreText }),
      el("div", { className: "fr-meta fr-id", text: id }),
      el("div", { className: "fr-meta fr-category", text: garment.category ?? "" }),
    ],
  );
  if (!image) card.style.height = `${CARD_H - IMG_H}px`;
  card.addEventListener("click", (event) => {
    event.stopPropagation();
    if (widgetIsLinked(node, PIN) || widgetIsLinked(node, EXCLUDE)) return;
    setState(node, id, NEXT_STATE[stateOf(node, id)]);
  });
  return card;
}

// Pins and excludes that the current results do not show (or all, before any run), so they
// can be seen and cleared without editing the text widgets.
function chips(node, shownIds) {
  const items = [];
  for (const [name, state] of [[PIN, "pin"], [EXCLUDE, "exclude"]]) {
    for (const id of parseIds(findWidget(node, name)?.value)) {
      if (shownIds.has(id)) continue;
      const chip = el("button", {
        type: "button",
        className: "fashion-rag-chip",
        text: `${state === "pin" ? "pinned" : "excluded"} ${id} ×`,
        title: "click to clear",
        dataset: { garmentId: id, state },
      });
      chip.addEventListener("click", (event) => {
        event.stopPropagation();
        setState(node, id, "none");
      });
      items.push(chip);
    }
  }
  return items.length ? el("div", { className: "fr-chips" }, items) : null;
}

function renderGallery(node) {
  const gallery = node.fashionRag;
  if (!gallery) return;
  const { root, result } = gallery;
  const garments = result?.garments ?? [];
  const images = result?.images ?? [];
  const shown = new Set(garments.map((g) => String(g.id)));
  const linked = widgetIsLinked(node, PIN) || widgetIsLinked(node, EXCLUDE);
  const head = garments.length
    ? `${garments.length} garment${garments.length === 1 ? "" : "s"} · click: pin → exclude → clear`
    : "Run the workflow to see the retrieved garments here.";
  replaceChildren(
    root,
    el("div", { className: "fr-head", text: head }),
    linked
      ? el("div", { className: "fr-note", text: "pin_ids / exclude_ids come from a link: clicks are off." })
      : null,
    garments.length
      ? el("div", { className: "fr-grid" }, garments.map((g, i) => garmentCard(node, g, images[i])))
      : null,
    chips(node, shown),
  );
  fitNode(node);
}

function galleryHeight(node) {
  const gallery = node.fashionRag;
  const n = gallery?.result?.garments?.length ?? 0;
  const width = Math.max(CARD_W, (node.size?.[0] ?? 300) - 2 * 10);
  const cols = Math.max(1, Math.floor((width + GAP) / (CARD_W + GAP)));
  const rows = Math.ceil(n / cols);
  const shown = new Set((gallery?.result?.garments ?? []).map((g) => String(g.id)));
  const listed = [...parseIds(findWidget(node, PIN)?.value), ...parseIds(findWidget(node, EXCLUDE)?.value)];
  const chipRows = listed.some((id) => !shown.has(id)) ? 1 : 0;
  return 22 + rows * (CARD_H + GAP) + chipRows * 26 + 4;
}

function fitNode(node) {
  if (!node.size || typeof node.computeSize !== "function") return;
  const wanted = node.computeSize();
  const width = Math.max(node.size[0], wanted[0]);
  const height = Math.max(node.size[1], wanted[1]);
  if (width !== node.size[0] || height !== node.size[1]) node.setSize([width, height]);
  node.setDirtyCanvas?.(true, true);
}

function addGallery(node) {
  const root = el("div", { className: "fashion-rag-gallery" });
  const widget = node.addDOMWidget(GALLERY, "fashion_rag_gallery", root, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => galleryHeight(node),
  });
  widget.serialize = false; // not in widgets_values either: positions of real widgets stay put
  node.fashionRag = { root, widget, result: null };

  // Typing into pin_ids / exclude_ids refreshes the badges.
  for (const name of [PIN, EXCLUDE]) {
    const w = findWidget(node, name);
    if (!w || w.fashionRagHooked) continue;
    const previous = w.callback;
    w.callback = function (...args) {
      const out = previous?.apply(this, args);
      queueMicrotask(() => renderGallery(node));
      return out;
    };
    w.fashionRagHooked = true;
  }
  renderGallery(node);
}

// ComfyUI keeps the last ui output of each node id while the same workflow stays open (an
// undo rebuilds the nodes but keeps these; loading another workflow clears them), which is
// also what keeps core image previews across an undo.
function lastOutput(node, key) {
  if (node.graph && app.graph && node.graph !== app.graph.rootGraph && node.graph !== app.graph) return null;
  const output = app.nodeOutputs?.[String(node.id)];
  return output && output[key] ? output : null;
}

function showRetrieval(node, output) {
  if (!node.fashionRag) addGallery(node);
  const garments = Array.isArray(output?.fashion_rag_garments) ? output.fashion_rag_garments : [];
  const images = Array.isArray(output?.images) ? output.images : [];
  node.fashionRag.result = { garments, images };
  renderGallery(node);
}

function addSummary(node) {
  const root = el("div", { className: "fashion-rag-summary" });
  const widget = node.addDOMWidget(SUMMARY, "fashion_rag_index_summary", root, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => node.fashionRagSummary?.height ?? 24,
  });
  widget.serialize = false;
  node.fashionRagSummary = { root, widget, height: 24 };
  root.replaceChildren(el("div", { className: "fr-dim", text: "Index summary appears after a run." }));
}

function formatDate(value) {
  if (value == null || value === "") return "unknown";
  const date = typeof value === "number" ? new Date(value * (value < 1e12 ? 1000 : 1)) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toISOString().slice(0, 16).replace("T", " ");
}

function showIndex(node, output) {
  if (!node.fashionRagSummary) addSummary(node);
  const info = first(output?.fashion_rag_index);
  const summary = node.fashionRagSummary;
  if (!info || typeof info !== "object") return;
  const perCategory = Object.entries(info.per_category ?? {});
  const rows = perCategory.map(([category, n]) =>
    el("tr", {}, [el("td", { text: category }), el("td", { className: "fr-num", text: String(n) })]),
  );
  replaceChildren(
    summary.root,
    el("div", { className: "fr-title", text: `${info.name ?? "index"} · ${info.items ?? "?"} garments` }),
    rows.length ? el("table", {}, [el("tbody", {}, rows)]) : null,
    el("div", { className: "fr-dim fr-encoder", text: `encoder: ${info.encoder ?? "unknown"}` }),
    el("div", { className: "fr-dim fr-built", text: `built: ${formatDate(info.built)}` }),
    info.warning ? el("div", { className: "fr-warning", text: info.warning }) : null,
  );
  summary.root.dataset.items = String(info.items ?? "");
  // An estimate first (the element may be off screen, hence unmeasured), then the real height.
  const warningLines = info.warning ? Math.ceil(String(info.warning).length / 50) : 0;
  summary.height = 20 + 16 * rows.length + 2 * 16 + 15 * warningLines + 8;
  fitNode(node);
  requestAnimationFrame(() => {
    const measured = [...summary.root.children].reduce((h, child) => h + child.offsetHeight, 0);
    if (measured > 0 && Math.abs(measured + 8 - summary.height) > 2) {
      summary.height = measured + 8;
      fitNode(node);
    }
  });
}

app.registerExtension({
  name: EXT,
  async setup() {
    injectStyle();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === RETRIEVE) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function (...args) {
        const out = onNodeCreated?.apply(this, args);
        try {
          addGallery(this);
        } catch (error) {
          console.warn(`[${EXT}] gallery not added:`, error);
        }
        return out;
      };
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output, ...rest) {
        const out = onExecuted?.apply(this, [output, ...rest]);
        showRetrieval(this, output);
        return out;
      };
      // The gallery shows the preview images; skip the stock canvas preview of the same images.
      const onDrawBackground = nodeType.prototype.onDrawBackground;
      nodeType.prototype.onDrawBackground = function (...args) {
        if (this.fashionRag) return undefined;
        return onDrawBackground?.apply(this, args);
      };
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function (...args) {
        const out = onConfigure?.apply(this, args);
        // widgets_values just arrived; an undo rebuilt the node: show its last output again.
        queueMicrotask(() => {
          const last = lastOutput(this, "fashion_rag_garments");
          if (last) showRetrieval(this, last);
          else renderGallery(this);
        });
        return out;
      };
    } else if (nodeData?.name === INDEX_LOADER) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function (...args) {
        const out = onNodeCreated?.apply(this, args);
        try {
          addSummary(this);
        } catch (error) {
          console.warn(`[${EXT}] index summary not added:`, error);
        }
        return out;
      };
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output, ...rest) {
        const out = onExecuted?.apply(this, [output, ...rest]);
        showIndex(this, output);
        return out;
      };
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function (...args) {
        const out = onConfigure?.apply(this, args);
        queueMicrotask(() => {
          const last = lastOutput(this, "fashion_rag_index");
          if (last) showIndex(this, last);
        });
        return out;
      };
    }
  },
});
