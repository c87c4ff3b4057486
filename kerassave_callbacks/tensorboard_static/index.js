// The Exports dashboard of kerassave_callbacks: one table per run.
// Loaded by TensorBoard as an ES module in the plugin's iframe; `render` is
// called once. Data comes from the plugin's routes, relative to its base URL.

const STYLE = `
  body { font-family: Roboto, "Helvetica Neue", sans-serif; margin: 16px;
         color: #212121; font-size: 13px; background: #fff; }
  h2 { font-size: 15px; font-weight: 500; margin: 20px 0 8px; }
  h2 .dir { color: #757575; font-weight: 400; margin-left: 8px; }
  table { border-collapse: collapse; min-width: 720px; }
  th { text-align: left; font-weight: 500; color: #616161; font-size: 12px;
       text-transform: uppercase; letter-spacing: .03em;
       border-bottom: 1px solid #e0e0e0; padding: 6px 12px; }
  td { border-bottom: 1px solid #eeeeee; padding: 6px 12px;
       white-space: nowrap; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  tr.removed td { color: #9e9e9e; }
  tr.failed td { color: #c62828; }
  tr.rejected td { color: #ad5700; }
  td.error { white-space: normal; max-width: 520px; }
  .chip { display: inline-block; border-radius: 10px; padding: 1px 8px;
          margin-left: 6px; font-size: 11px; color: #fff; }
  .serving { background: #f57c00; }
  .best { background: #1976d2; }
  .empty { color: #757575; }
`;

async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(`${url}: ${response.status}`);
  }
  return response.json();
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

// As `kerassave list` prints sizes (cli.format_size).
function size(bytes) {
  if (bytes == null) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let n = bytes, unit = 0;
  while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit += 1; }
  return unit === 0 ? `${n.toFixed(0)} B` : `${n.toFixed(1)} ${units[unit]}`;
}

function when(record) {
  const seconds = record.created || record.wall_time;
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

function chip(td, name, text) {
  const span = document.createElement("span");
  span.className = `chip ${name}`;
  span.textContent = text;
  td.appendChild(span);
}

function table(rows) {
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const name of ["Version", "Time", "Epoch", "Step", "Monitor",
                      "Duration", "Size", "Status"]) {
    const th = document.createElement("th");
    th.textContent = name;
    head.appendChild(th);
  }
  const body = t.createTBody();
  for (const r of rows) {
    const tr = body.insertRow();
    tr.className = ["failed", "rejected", "removed"].includes(r.status) ?
        r.status : "kept";
    tr.dataset.version = r.version ?? "";
    const version = cell(tr, r.version ?? "");
    if (r.serving) chip(version, "serving", "served");
    if (r.best) chip(version, "best", "best");
    cell(tr, when(r));
    cell(tr, r.epoch == null ? "" : String(r.epoch), "num");
    cell(tr, r.step ?? "", "num");
    const value = r.monitor_value;
    cell(tr, r.monitor ? `${r.monitor}=${value == null ? "-" :
        Number(value).toPrecision(4)}` : "");
    cell(tr, r.duration_seconds == null ? "" :
        `${r.duration_seconds.toFixed(3)} s`, "num");
    cell(tr, size(r.size_bytes), "num");
    if (r.status === "failed" || r.status === "rejected") {
      cell(tr, `${r.status}: ${r.error}`, "error status");
    } else {
      cell(tr, r.status, "status");
    }
  }
  return t;
}

export async function render() {
  const style = document.createElement("style");
  style.textContent = STYLE;
  document.head.appendChild(style);
  const root = document.createElement("div");
  root.id = "exports";
  document.body.appendChild(root);
  const runs = await fetchJson("./runs");
  if (!runs.length) {
    root.innerHTML = '<p class="empty">No exports recorded yet.</p>';
    return;
  }
  for (const run of runs) {
    const rows = await fetchJson(`./exports?run=${encodeURIComponent(run)}`);
    const title = document.createElement("h2");
    title.textContent = run;
    const dir = rows.find((r) => r.export_dir);
    if (dir) {
      const span = document.createElement("span");
      span.className = "dir";
      span.textContent = dir.export_dir;
      title.appendChild(span);
    }
    root.appendChild(title);
    root.appendChild(table(rows));
  }
  root.dataset.ready = "true";
}
