"use strict";
const $ = (id) => document.getElementById(id);
const KEYNAMES = {ArrowLeft: "\u2190", ArrowRight: "\u2192"};
let state = null;
let shownAt = 0;
let examplesFor = null;

function setMode(mode) { document.body.dataset.mode = mode; }
function show(id) {
  for (const s of ["start", "done", "run"]) $(s).classList.toggle("hidden", s !== id);
}
function cap(s) { return s.charAt(0).toUpperCase() + s.slice(1); }
function kbd(keys) { return keys.map((k) => "<kbd>" + (KEYNAMES[k] || k) + "</kbd>").join(""); }

async function api(path, options) {
  try {
    const r = await fetch(path, Object.assign({cache: "no-store"}, options || {}));
    const body = await r.json().catch(() => ({error: r.status + " " + r.statusText}));
    return {ok: r.ok, status: r.status, body: body};
  } catch (e) {
    return {ok: false, status: 0, body: {error: "the server does not answer (" + e + ")"}};
  }
}

function showStart(message) {
  state = null;
  show("start");
  $("who").textContent = $("part").textContent = $("progress").textContent = "";
  $("start-error").textContent = message || "";
  setMode("start");
  $("subject-name").focus();
}

async function load(subject) {
  setMode("busy");
  const r = await api("/api/state?subject=" + encodeURIComponent(subject));
  if (!r.ok) { showStart(r.body.error); return; }
  render(r.body);
}

function fillExamples(c, img) {
  // A third of the test image, at most 80 px tall so that 4 rows stay in view below it.
  const f = Math.min(img.scale / 3, 80 / img.height), w = img.width * f, h = img.height * f;
  ["first", "second"].forEach((slot, k) => {
    const kind = c.kinds[k];
    $("examples-" + slot + "-title").textContent =
      c.examples[kind].length + " " + kind + " examples";
    const grid = $("examples-" + slot);
    grid.replaceChildren(...c.examples[kind].map((src) => {
      const e = document.createElement("img");
      e.className = "px"; e.src = src; e.width = w; e.height = h; e.alt = kind + " example";
      e.dataset.kind = kind;
      return e;
    }));
  });
}

function render(s) {
  state = s;
  $("who").textContent = "Subject: " + s.subject;
  if (s.done) {
    show("done");
    $("part").textContent = "";
    $("progress").textContent = s.answered + " of " + s.total + " answered";
    setMode("done");
    return;
  }
  const c = s.condition, img = s.image;
  show("run");
  $("part").textContent = "Part " + c.part + " of " + s.parts + ": " + c.title;
  $("progress").textContent = "Trial " + (c.answered + 1) + " of " + c.total;
  $("question").innerHTML = "Is this image <b>" + c.kinds[0] + "</b> or <b>" + c.kinds[1] +
    "</b>?";
  ["first", "second"].forEach((slot, k) => {
    const kind = c.kinds[k], b = $("answer-" + slot);
    b.dataset.answer = kind;
    b.innerHTML = cap(kind) + " " + kbd(c.keys[kind]);
  });
  $("keys-hint").innerHTML = "Keys: " + kbd(c.keys[c.kinds[0]]) + " " + c.kinds[0] +
    ", " + kbd(c.keys[c.kinds[1]]) + " " + c.kinds[1] + ". No feedback is given.";
  if (examplesFor !== c.name) { fillExamples(c, img); examplesFor = c.name; }
  const t = $("trial");
  t.width = img.width * img.scale; t.height = img.height * img.scale;
  setButtons(false);
  setMode("busy");
  t.onload = () => {
    shownAt = performance.now();
    setButtons(true);
    $("status").textContent = "";
    setMode("ready");
  };
  t.onerror = () => { $("status").textContent = "The image did not load; reload the page."; };
  // The same image again (a 409 naming the trial on screen) fires no load event: go on.
  if (t.getAttribute("src") === s.trial.image && t.complete && t.naturalWidth) t.onload();
  else t.src = s.trial.image;
}

function setButtons(on) { $("answer-first").disabled = $("answer-second").disabled = !on; }

async function answer(kind) {
  if (document.body.dataset.mode !== "ready") return;  // one answer per image shown
  setMode("busy");
  // A clicked button keeps the focus, and Enter or Space would answer the next image with it.
  if (document.activeElement) document.activeElement.blur();
  setButtons(false);
  const body = {
    subject: state.subject, condition: state.condition.name, trial: state.trial.index,
    answer: kind, response_ms: Math.round(performance.now() - shownAt),
  };
  const r = await api("/api/answer", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  if (r.ok) render(r.body);
  else if (r.status === 409 && r.body.state) render(r.body.state);  // answered elsewhere
  else {
    $("status").textContent = "Not saved: " + r.body.error + ". Try again.";
    setButtons(true);
    setMode("ready");
  }
}

$("answer-first").addEventListener("click", (e) => answer(e.currentTarget.dataset.answer));
$("answer-second").addEventListener("click", (e) => answer(e.currentTarget.dataset.answer));
document.addEventListener("keydown", (e) => {
  if (!state || !state.condition || e.repeat || e.altKey || e.ctrlKey || e.metaKey) return;
  if (e.target instanceof HTMLInputElement) return;
  for (const kind of state.condition.kinds) {
    if (state.condition.keys[kind].includes(e.key)) { e.preventDefault(); answer(kind); }
  }
});
$("start-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("subject-name").value.trim();
  history.replaceState(null, "", "?subject=" + encodeURIComponent(name));
  load(name);
});

// The subject named in the URL, else the server's --subject, else the page asks.
async function begin() {
  let first = new URLSearchParams(location.search).get("subject");
  if (first === null) {
    const r = await api("/api/config");
    if (!r.ok) { showStart(r.body.error); return; }
    first = r.body.subject || "";
  }
  if (first) {
    history.replaceState(null, "", "?subject=" + encodeURIComponent(first));
    load(first);
  } else showStart("");
}

begin();
