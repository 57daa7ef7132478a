// gradtool graph --html: the autograd graph of one loss, collapsed by module, drawn as SVG.
// The report (GraphReport.to_dict()) sits in <script id="graph-data">; nothing is fetched.
// Steps: collapse the fine graph to the expanded modules -> layered layout (longest-path
// layers, barycentre ordering sweeps, x by isotonic regression) -> SVG -> pan/zoom/expand.
window.addEventListener("error", function (ev) {
  // a page that fails says so where the graph would be (the console has the details)
  var box = document.getElementById("view-summary");
  if (box) box.textContent = "the page failed to draw the graph: " + ev.message;
});
(function () {
  "use strict";

  var SVGNS = "http://www.w3.org/2000/svg";
  var DATA = JSON.parse(document.getElementById("graph-data").textContent);
  var FONT = '"DejaVu Sans", system-ui, "Segoe UI", Helvetica, Arial, sans-serif';
  var RANK_SEP = 36; // vertical gap between layers
  var NODE_GAP = 22; // horizontal gap between neighbours in a layer
  var DUMMY_W = 6; // a long edge's waypoint
  var FRAME_HEAD = 22, FRAME_PAD = 8; // an expanded module's frame: its title, its border
  var DEAD_BADGE = 0.5; // dead fraction from which a box carries the "dead" badge

  // ---- the report as a module tree ------------------------------------------------------

  var modules = new Map(); // name -> module record (+ children, own nodes)
  DATA.modules.forEach(function (m) {
    modules.set(m.name, Object.assign({ children: [], own: [] }, m));
  });
  function parentName(name) {
    if (name === "") return null;
    var i = name.lastIndexOf(".");
    return i < 0 ? "" : name.slice(0, i);
  }
  function ensureModule(name) {
    // a node may name a module the report does not list: give it a place in the tree
    if (modules.has(name)) return modules.get(name);
    var parent = parentName(name);
    if (parent !== null) ensureModule(parent);
    var rec = {
      name: name, type: "", parent: parent, children: [], own: [], params: [], source: null,
      depth: parent === null ? 0 : modules.get(parent).depth + 1,
    };
    modules.set(name, rec);
    return rec;
  }
  ensureModule("");
  DATA.nodes.forEach(function (n) { ensureModule(n.module); });
  (DATA.unreached || []).forEach(function (u) { ensureModule(u.module); });
  (DATA.flow || []).forEach(function (f) { ensureModule(f.module); });
  // a container (ModuleList, ModuleDict) never runs: it is never a box or a frame; what is
  // under it hangs on its nearest ancestor that is not one, as in the DOT view
  var hostOf = new Map();
  modules.forEach(function (m) {
    if (!m.container) return;
    var h = m;
    while (h.container && h.parent !== null && modules.has(h.parent)) h = modules.get(h.parent);
    hostOf.set(m.name, h.name);
  });
  hostOf.forEach(function (h, c) {
    var host = modules.get(h), box = modules.get(c);
    host.params = (host.params || []).concat(box.params || []);
    host.numel = (host.numel || 0) + (box.numel || 0);
  });
  hostOf.forEach(function (h, c) { modules.delete(c); });
  function home(name) { return hostOf.has(name) ? hostOf.get(name) : name; }
  modules.forEach(function (m) { if (m.parent !== null && hostOf.has(m.parent)) m.parent = hostOf.get(m.parent); });
  var ROOT = null;
  modules.forEach(function (m) {
    if (m.parent !== null && m.parent !== undefined && modules.has(m.parent)) {
      modules.get(m.parent).children.push(m.name);
    } else if (ROOT === null || m.name === "") {
      ROOT = m.name;
    }
  });

  var chainCache = new Map();
  function chain(name) {
    // the module's ancestors, the root first, the module last
    var hit = chainCache.get(name);
    if (hit) return hit;
    var m = modules.get(name);
    var out = m.parent !== null && modules.has(m.parent) ? chain(m.parent).concat([name]) : [name];
    chainCache.set(name, out);
    return out;
  }
  function isUnder(name, ancestor) {
    return chain(name).indexOf(ancestor) >= 0;
  }

  // parameters: a node's qualified name, and those that have no path to the loss
  var unreached = new Map();
  (DATA.unreached || []).forEach(function (u) { unreached.set(u.name, Object.assign({}, u, { module: home(u.module) })); });
  function paramName(n) {
    if (n.module === "" || n.label.indexOf(n.module + ".") === 0) return n.label;
    return n.module + "." + n.label;
  }
  var nodes = DATA.nodes.map(function (n) { return Object.assign({}, n, { module: home(n.module) }); });
  var seenParams = new Set();
  nodes.forEach(function (n) {
    if (n.kind === "param") {
      n.qualified = paramName(n);
      n.unreached = unreached.has(n.qualified);
      seenParams.add(n.qualified);
    }
  });
  // an unreached parameter the forward never used has no node: give it a leaf of its own
  unreached.forEach(function (u) {
    if (seenParams.has(u.name)) return;
    var short = u.module && u.name.indexOf(u.module + ".") === 0 ? u.name.slice(u.module.length + 1) : u.name;
    nodes.push({ id: "unused:" + u.name, kind: "param", label: short, module: u.module, shape: [],
      qualified: u.name, unreached: true });
  });
  nodes.forEach(function (n) {
    if (n.kind !== "input" && n.kind !== "loss") modules.get(n.module).own.push(n);
  });

  var subtreeParamsCache = new Map();
  function subtreeParams(name) {
    var hit = subtreeParamsCache.get(name);
    if (hit) return hit;
    var m = modules.get(name);
    var out = (m.params || []).slice();
    m.children.forEach(function (c) { out = out.concat(subtreeParams(c)); });
    subtreeParamsCache.set(name, out);
    return out;
  }
  function unreachedUnder(name) {
    var out = [];
    unreached.forEach(function (u) { if (modules.has(u.module) && isUnder(u.module, name)) out.push(u); });
    return out;
  }
  function expandable(name) {
    var m = modules.get(name);
    return m.children.length > 0 || m.own.length > 0;
  }

  // ---- gradient flow (graph --flow) --------------------------------------------------------

  // a module's row: the gradient norm over its own parameters, the largest dead fraction of
  // its activation modules; rows with `via`: a functional activation its forward called
  var flowBy = new Map(), callsBy = new Map();
  (DATA.flow || []).forEach(function (f) {
    var name = home(f.module);
    if (f.via) {
      if (!callsBy.has(name)) callsBy.set(name, []);
      callsBy.get(name).push(f);
    } else if (flowBy.has(name)) { // a container's row joins its host's
      var a = flowBy.get(name);
      flowBy.set(name, { module: name, grad_norm: rss(a.grad_norm, f.grad_norm), dead_fraction: worst(a.dead_fraction, f.dead_fraction) });
    } else {
      flowBy.set(name, f);
    }
  });
  function rss(a, b) {
    if (a === null || a === undefined) return b === undefined ? null : b;
    if (b === null || b === undefined) return a;
    return Math.hypot(a, b);
  }
  function worst(a, b) {
    if (a === null || a === undefined) return b === undefined ? null : b;
    if (b === null || b === undefined) return a;
    return Math.max(a, b);
  }
  var hasFlow = DATA.flow && DATA.flow.length > 0;
  var flowCache = new Map();
  function flowOf(name) {
    // a box: the norm over every parameter under it (the root of the sum of the squares of
    // its modules' norms: their parameters are disjoint), the worst dead fraction under it
    if (flowCache.has(name)) return flowCache.get(name);
    var own = flowBy.get(name);
    var out = { norm: own ? own.grad_norm : null, dead: own ? own.dead_fraction : null, rows: own && own.grad_norm !== null ? 1 : 0 };
    (callsBy.get(name) || []).forEach(function (c) { out.dead = worst(out.dead, c.dead_fraction); });
    modules.get(name).children.forEach(function (c) {
      var f = flowOf(c);
      if (!f) return;
      out.norm = rss(out.norm, f.norm);
      out.dead = worst(out.dead, f.dead);
      out.rows += f.rows;
    });
    if (out.norm === null && (out.dead === null || out.dead === undefined)) out = null;
    flowCache.set(name, out);
    return out;
  }
  // a functional activation's call on the op node that shows it: the k-th call of `via` in a
  // module is the k-th op of that name the module made, in forward order (ids grow from the
  // loss, as the engine numbers them); `torch.relu`, `F.leaky_relu` ~ "Relu", "LeakyRelu"
  function opName(text) { text = String(text); return text.slice(text.lastIndexOf(".") + 1).replace(/_/g, "").toLowerCase(); }
  (function () {
    if (!callsBy.size) return;
    var opsIn = new Map();
    nodes.filter(function (n) { return n.kind === "op"; })
      .sort(function (a, b) { return Number(b.id) - Number(a.id); })
      .forEach(function (n) {
        var key = n.module + "\u0000" + opName(n.label);
        if (!opsIn.has(key)) opsIn.set(key, []);
        opsIn.get(key).push(n);
      });
    callsBy.forEach(function (calls, name) {
      calls.forEach(function (c) {
        var found = opsIn.get(name + "\u0000" + opName(c.via)) || [];
        var n = c.call ? found[c.call - 1] : null;
        if (n && c.dead_fraction !== null && c.dead_fraction !== undefined) n.dead = worst(n.dead, c.dead_fraction);
      });
    });
  })();

  var logLo = 0, logHi = 0;
  (function () {
    // the scale spans what a box can show: every module's norm but the whole model's (which
    // is largest, and a box only at depth 0), so a box keeps its colour when others expand
    var logs = [];
    if (hasFlow) {
      modules.forEach(function (m) {
        var f = m.name === ROOT ? null : flowOf(m.name);
        if (f && f.norm > 0) logs.push(Math.log10(f.norm));
      });
      var whole = flowOf(ROOT); // a model without submodules: its own norm is the scale
      if (!logs.length && whole && whole.norm > 0) logs.push(Math.log10(whole.norm));
    }
    if (logs.length) {
      logLo = Math.min.apply(null, logs);
      logHi = Math.max.apply(null, logs);
      if (logHi - logLo < 1e-9) { logLo -= 0.5; logHi += 0.5; }
    }
  })();
  // viridis, 9 stops
  var RAMP = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"];
  function rampColor(t) {
    t = (isFinite(t) ? Math.max(0, Math.min(1, t)) : 0.5) * (RAMP.length - 1);
    var i = Math.min(RAMP.length - 2, Math.floor(t)), f = t - i;
    var a = hex(RAMP[i]), b = hex(RAMP[i + 1]);
    return "rgb(" + [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * f); }).join(",") + ")";
  }
  function hex(h) { return [1, 3, 5].map(function (i) { return parseInt(h.slice(i, i + 2), 16); }); }
  function normColor(norm) {
    if (norm === null || norm === undefined) return null;
    if (!(norm > 0)) return "rgb(90,90,90)";
    return rampColor((Math.log10(norm) - logLo) / (logHi - logLo));
  }
  function inkFor(rgb) {
    var c = rgb.match(/\d+/g).map(Number);
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 140 ? "#111" : "#fff";
  }
  function sci(x) {
    if (x === null || x === undefined) return "–";
    if (x === 0) return "0";
    return Math.abs(Math.log10(Math.abs(x))) < 3 ? x.toPrecision(3) : x.toExponential(2);
  }
  function pct(x) { return Math.round(100 * x) + "%"; }

  // ---- which modules are open -------------------------------------------------------------

  var expanded = new Set();
  function expandToDepth(depth) {
    expanded = new Set();
    modules.forEach(function (m) {
      if (m.depth < depth && m.children.length > 0) expanded.add(m.name);
    });
  }
  expandToDepth(DATA.depth);

  function unitKeyOf(n) {
    if (n.kind === "input" || n.kind === "loss") return "n:" + n.id;
    var c = chain(n.module);
    for (var i = 0; i < c.length; i++) if (!expanded.has(c[i])) return "m:" + c[i];
    return "n:" + n.id;
  }

  // ---- the collapsed graph ----------------------------------------------------------------

  var measureCtx = document.createElement("canvas").getContext("2d");
  var widthCache = new Map();
  function textWidth(text, font) {
    var key = font + "|" + text;
    var hit = widthCache.get(key);
    if (hit === undefined) {
      measureCtx.font = font;
      hit = measureCtx.measureText(text).width;
      widthCache.set(key, hit);
    }
    return hit;
  }
  function moduleTitle(name) { return name === "" ? "(model)" : name; }
  function boxText(name) {
    // inside a frame, the name below the frame's ("attention.self" in encoder.layer.0)
    var m = modules.get(name);
    var title = moduleTitle(name);
    if (m.parent && m.parent !== ROOT && name.indexOf(m.parent + ".") === 0) title = name.slice(m.parent.length + 1);
    if (title.length > 30) title = "…" + title.slice(title.length - 29);
    // a module whose forward ran more than once (a shared block, a cell in a loop): ×N
    // one that never ran is said on its box, as the DOT view says it
    var ran = m.calls === 0 ? "  · never ran" : m.calls > 1 ? "  ×" + m.calls : "";
    return { title: title, type: (m.type || "") + ran };
  }
  function subtreeNumel(name) {
    var m = modules.get(name), n = m.numel || 0;
    m.children.forEach(function (c) { n += subtreeNumel(c); });
    return n;
  }
  function count(n) {
    // as the DOT view writes it: 12, 1.2k, 3.4M
    return n < 1000 ? String(n) : n < 1e6 ? (n / 1000).toFixed(1) + "k" : (n / 1e6).toFixed(1) + "M";
  }
  function paramPillText(name) {
    // the parameter leaf: how many parameters (elements) as the DOT view says, else the
    // tensors' names or number
    var params = subtreeParams(name);
    if (!params.length) return null;
    var bad = unreachedUnder(name).length, numel = subtreeNumel(name);
    var text = numel ? count(numel) + " params"
      : params.length <= 2 ? params.map(function (p) { return p.slice(p.lastIndexOf(".") + 1); }).join(", ")
      : params.length + " tensors";
    return text + (bad && (numel || params.length > 2)
      ? " · " + bad + " of " + params.length + " tensor" + (params.length > 1 ? "s" : "") + " unreached" : "");
  }

  function buildGraph() {
    var units = new Map();
    var unitOfNode = new Map();
    nodes.forEach(function (n) {
      var key = unitKeyOf(n);
      unitOfNode.set(String(n.id), key);
      var u = units.get(key);
      if (!u) {
        u = key.charAt(0) === "m"
          ? { key: key, kind: "module", module: key.slice(2), members: 0, innerCuts: new Set() }
          : { key: key, kind: n.kind, node: n, module: n.module, members: 0, innerCuts: new Set() };
        units.set(key, u);
      }
      u.members += 1;
      if (n.reaches_loss === false) u.behindCut = (u.behindCut || 0) + 1;
    });
    var edgeMap = new Map();
    DATA.edges.forEach(function (e) {
      var a = unitOfNode.get(String(e.src)), b = unitOfNode.get(String(e.dst));
      if (a === undefined || b === undefined) return;
      if (a === b) {
        if (e.cut) units.get(a).innerCuts.add(e.cut);
        return;
      }
      var key = a + "\u0000" + b + "\u0000" + (e.cut || "");
      var rec = edgeMap.get(key);
      if (!rec) edgeMap.set(key, (rec = { src: a, dst: b, cut: e.cut || null, count: 0 }));
      rec.count += 1;
    });
    units.forEach(sizeUnit);
    return { units: Array.from(units.values()), edges: Array.from(edgeMap.values()) };
  }

  function cutLabelWidth(cut) { return textWidth("✂ " + cut, "600 11px " + FONT) + 10; }

  function sizeUnit(u) {
    if (u.kind === "module") {
      var t = boxText(u.module);
      u.text = t;
      var boxW = Math.max(textWidth(t.title, "600 13px " + FONT), textWidth(t.type, "11px " + FONT)) + 26;
      if (expandable(u.module)) boxW += 12;
      u.boxW = Math.max(96, Math.ceil(boxW));
      u.h = 40;
      u.pill = paramPillText(u.module);
      var pillFont = (unreachedUnder(u.module).length ? "600 " : "") + "10px " + FONT; // red: bold
      u.pillW = u.pill ? Math.ceil(textWidth(u.pill, pillFont)) + 14 : 0;
      u.w = u.boxW + (u.pill ? u.pillW + 12 : 0);
      u.ax = u.pill ? (u.w - u.boxW) / 2 : 0; // the box's centre, right of the unit's
    } else {
      var n = u.node;
      u.text = n.kind === "param" ? n.label : n.kind === "loss" ? n.label || "loss" : n.label;
      var font = n.kind === "op" ? "11px " + FONT : "600 11px " + FONT;
      u.boxW = Math.ceil(textWidth(u.text, font)) + (n.kind === "op" ? 14 : 22);
      u.h = n.kind === "op" ? 22 : 26;
      u.w = u.boxW;
      u.ax = 0;
    }
  }

  // ---- layered layout ----------------------------------------------------------------------

  function layout(g) {
    var V = g.units.length;
    var index = new Map();
    g.units.forEach(function (u, i) { index.set(u.key, i); });
    var out = [], inn = [];
    for (var i = 0; i < V; i++) { out.push([]); inn.push([]); }
    // 1. break cycles (a module called twice makes one): depth-first, back edges reversed
    var E = g.edges.map(function (e) { return { s: index.get(e.src), t: index.get(e.dst), e: e, reversed: false }; });
    var adj = [];
    for (i = 0; i < V; i++) adj.push([]);
    E.forEach(function (d, k) { adj[d.s].push(k); });
    var state = new Uint8Array(V); // 0 new, 1 on stack, 2 done
    for (var root = 0; root < V; root++) {
      if (state[root]) continue;
      var stack = [[root, 0]];
      state[root] = 1;
      while (stack.length) {
        var top = stack[stack.length - 1];
        if (top[1] < adj[top[0]].length) {
          var d = E[adj[top[0]][top[1]++]];
          if (state[d.t] === 1) d.reversed = true;
          else if (state[d.t] === 0) { state[d.t] = 1; stack.push([d.t, 0]); }
        } else {
          state[top[0]] = 2;
          stack.pop();
        }
      }
    }
    E.forEach(function (d) {
      if (d.reversed) { var s = d.s; d.s = d.t; d.t = s; }
      if (d.s !== d.t) { out[d.s].push(d); inn[d.t].push(d); }
    });
    // a cut edge spans two layers at least: its label gets a layer of its own between them
    function span(d) { return d.e.cut ? 2 : 1; }
    // 2. layers: longest path from the sources; then every vertex but an input moves down to
    // just above its first consumer (a parameter and its transpose next to the op using them)
    var rank = new Int32Array(V), indeg = new Int32Array(V), order = [];
    for (i = 0; i < V; i++) indeg[i] = inn[i].length;
    var queue = [];
    for (i = 0; i < V; i++) if (!indeg[i]) queue.push(i);
    while (queue.length) {
      var v = queue.shift();
      order.push(v);
      out[v].forEach(function (d) {
        rank[d.t] = Math.max(rank[d.t], rank[v] + span(d));
        if (--indeg[d.t] === 0) queue.push(d.t);
      });
    }
    for (i = order.length - 1; i >= 0; i--) {
      v = order[i];
      if (!out[v].length || g.units[v].kind === "input") continue;
      var lowest = Infinity;
      out[v].forEach(function (d) { lowest = Math.min(lowest, rank[d.t] - span(d)); });
      rank[v] = lowest;
    }
    var maxRank = 0;
    for (i = 0; i < V; i++) maxRank = Math.max(maxRank, rank[i]);
    // 3. long edges get a waypoint per layer they cross
    var verts = g.units.map(function (u, k) { return { unit: u, rank: rank[k], w: u.w, h: u.h, up: [], down: [] }; });
    E.forEach(function (d) {
      if (d.s === d.t) { d.path = null; return; }
      var prev = d.s;
      d.path = [d.s];
      // a cut edge's label rides on its middle waypoint, which is as wide as the label
      var labelRank = d.e.cut ? Math.floor((rank[d.s] + rank[d.t]) / 2) : -1;
      for (var r = rank[d.s] + 1; r < rank[d.t]; r++) {
        var w = verts.length;
        var wide = r === labelRank ? cutLabelWidth(d.e.cut) : DUMMY_W;
        verts.push({ unit: null, rank: r, w: wide, h: r === labelRank ? 18 : 0, up: [], down: [], label: r === labelRank,
          ends: [verts[d.s], verts[d.t]] });
        verts[prev].down.push(w);
        verts[w].up.push(prev);
        d.path.push(w);
        prev = w;
      }
      verts[prev].down.push(d.t);
      verts[d.t].up.push(prev);
      d.path.push(d.t);
    });
    var layers = [];
    for (var r = 0; r <= maxRank; r++) layers.push([]);
    // initial order: first seen in a depth-first walk from the sources, in the report's order
    var seen = new Uint8Array(verts.length);
    function visit(s) {
      var st = [s];
      while (st.length) {
        var x = st.pop();
        if (seen[x]) continue;
        seen[x] = 1;
        layers[verts[x].rank].push(x);
        for (var j = verts[x].down.length - 1; j >= 0; j--) st.push(verts[x].down[j]);
      }
    }
    for (i = 0; i < verts.length; i++) if (!verts[i].up.length && verts[i].down.length) visit(i);
    for (i = 0; i < verts.length; i++) visit(i); // unconnected ones (an unused parameter) last
    // 4. ordering: barycentre sweeps, down and up, keeping the order with fewest crossings
    var pos = new Float64Array(verts.length);
    function number() { layers.forEach(function (L) { L.forEach(function (x, j) { pos[x] = j; }); }); }
    number();
    function sweep(down) {
      var from = down ? 1 : layers.length - 2, to = down ? layers.length : -1, step = down ? 1 : -1;
      for (var r = from; r !== to; r += step) {
        var L = layers[r];
        var bary = new Map();
        L.forEach(function (x) {
          var nb = down ? verts[x].up : verts[x].down;
          if (!nb.length) { bary.set(x, pos[x]); return; }
          var sum = 0;
          nb.forEach(function (y) { sum += pos[y]; });
          bary.set(x, sum / nb.length);
        });
        L.sort(function (a, b) { return bary.get(a) - bary.get(b) || pos[a] - pos[b]; });
        L.forEach(function (x, j) { pos[x] = j; });
      }
    }
    function crossings() {
      var total = 0;
      for (var r = 0; r + 1 < layers.length; r++) {
        var pairs = [];
        layers[r].forEach(function (x) { verts[x].down.forEach(function (y) { pairs.push([pos[x], pos[y]]); }); });
        pairs.sort(function (a, b) { return a[0] - b[0] || a[1] - b[1]; });
        var n = layers[r + 1].length, tree = new Int32Array(n + 1), seenCount = 0;
        pairs.forEach(function (p) {
          // Fenwick tree: edges seen so far that end right of this one
          var s = 0;
          for (var k = p[1] + 1; k > 0; k -= k & -k) s += tree[k];
          total += seenCount - s;
          for (k = p[1] + 1; k <= n; k += k & -k) tree[k] += 1;
          seenCount += 1;
        });
      }
      return total;
    }
    var best = crossings(), bestLayers = layers.map(function (L) { return L.slice(); });
    for (var it = 0; it < 8 && best > 0; it++) {
      sweep(it % 2 === 0);
      var c = crossings();
      if (c < best) { best = c; bestLayers = layers.map(function (L) { return L.slice(); }); }
    }
    layers = bestLayers;
    number();
    layers = layers.map(function (L) { return keepFramesTogether(L, verts, pos); });
    number();
    // 5. x: each vertex as near the mean of its neighbours as the gaps allow (isotonic
    // regression of the wished positions, pool-adjacent-violators), sweeps down and up
    var xs = new Float64Array(verts.length);
    function gap(a, b) {
      var real = (verts[a].unit ? 1 : 0) + (verts[b].unit ? 1 : 0);
      var g2 = real === 2 ? NODE_GAP : real === 1 ? 16 : 8;
      var fa = framesOf(verts[a]), fb = framesOf(verts[b]);
      if (fa[fa.length - 1] !== fb[fb.length - 1]) g2 += 14; // room for a frame's border
      return verts[a].w / 2 + verts[b].w / 2 + g2;
    }
    layers.forEach(function (L) {
      var x = 0;
      L.forEach(function (v, j) { if (j) x += gap(L[j - 1], v); xs[v] = x; });
      L.forEach(function (v) { xs[v] -= x / 2; });
    });
    function centre(v) { return xs[v] + (verts[v].unit ? verts[v].unit.ax : 0); }
    function place(L, wish) {
      var n = L.length, offs = new Float64Array(n);
      for (var j = 1; j < n; j++) offs[j] = offs[j - 1] + gap(L[j - 1], L[j]);
      var blocks = []; // [weighted sum, weight, count]
      for (j = 0; j < n; j++) {
        // a leaf (one neighbour: a parameter, an input) gives way to the chain beside it,
        // else the chain drifts sideways by half a leaf at every layer
        var v = verts[L[j]], wt = v.up.length + v.down.length > 1 || !v.unit ? 1 : 0.05;
        blocks.push([(wish[j] - offs[j]) * wt, wt, 1]);
        while (blocks.length > 1) {
          var b = blocks[blocks.length - 1], a = blocks[blocks.length - 2];
          if (a[0] / a[1] <= b[0] / b[1]) break;
          a[0] += b[0]; a[1] += b[1]; a[2] += b[2];
          blocks.pop();
        }
      }
      j = 0;
      blocks.forEach(function (bl) {
        for (var k = 0; k < bl[2]; k++, j++) xs[L[j]] = bl[0] / bl[1] + offs[j];
      });
    }
    function align(useUp, useDown) {
      layers.forEach(function (L) {
        var wish = L.map(function (v) {
          // the real neighbours when there are any: an op joining a long edge (a residual
          // Add) stays in line with the op before it, and the long edge bends instead
          var nb = (useUp ? verts[v].up : []).concat(useDown ? verts[v].down : []);
          var real = nb.filter(function (y) { return verts[y].unit; });
          if (real.length) nb = real;
          var sum = 0, n = nb.length;
          nb.forEach(function (y) { sum += centre(y); });
          var ax = verts[v].unit ? verts[v].unit.ax : 0;
          return n ? sum / n - ax : xs[v];
        });
        place(L, wish);
      });
    }
    for (it = 0; it < 6; it++) {
      if (it % 2 === 0) align(true, false);
      else { layers.reverse(); align(false, true); layers.reverse(); }
    }
    align(true, true);
    // 6. y by layer, and the whole drawing moved to positive coordinates
    // a frame that opens in a layer needs room above it for its title, one that closes room
    // below for its border (nested frames: one each)
    var first = new Map(), last = new Map();
    verts.forEach(function (v) {
      if (!v.unit) return;
      framesOf(v).forEach(function (f) {
        first.set(f, Math.min(first.has(f) ? first.get(f) : Infinity, v.rank));
        last.set(f, Math.max(last.has(f) ? last.get(f) : -1, v.rank));
      });
    });
    var opens = new Int32Array(maxRank + 1), closes = new Int32Array(maxRank + 1);
    verts.forEach(function (v) {
      if (!v.unit) return;
      var o = 0, c = 0;
      framesOf(v).forEach(function (f) { if (first.get(f) === v.rank) o++; if (last.get(f) === v.rank) c++; });
      opens[v.rank] = Math.max(opens[v.rank], o);
      closes[v.rank] = Math.max(closes[v.rank], c);
    });
    var ys = new Float64Array(maxRank + 1), y = 0;
    layers.forEach(function (L, r) {
      var h = 0;
      L.forEach(function (v) { h = Math.max(h, verts[v].h); });
      y += opens[r] * FRAME_HEAD + (r ? RANK_SEP + closes[r - 1] * FRAME_PAD : 0);
      ys[r] = y + h / 2;
      y += h;
    });
    var minX = Infinity;
    verts.forEach(function (v, k) { minX = Math.min(minX, xs[k] - v.w / 2); });
    verts.forEach(function (v, k) { v.x = xs[k] - minX + 20; v.y = ys[v.rank] + 30; });
    g.units.forEach(function (u, k) { u.x = verts[k].x; u.y = verts[k].y; u.cx = u.x + u.ax; });
    // 7. each edge as the points it passes, in the forward's direction
    E.forEach(function (d) {
      if (!d.path) return;
      var pts = d.path.map(function (k) {
        var v = verts[k];
        return { x: v.unit ? v.unit.cx : v.x, y: v.y, h: v.unit ? v.h : 0 };
      });
      pts[0] = { x: pts[0].x, y: pts[0].y + pts[0].h / 2 };
      var last = pts[pts.length - 1];
      pts[pts.length - 1] = { x: last.x, y: last.y - last.h / 2 };
      d.e.labelAt = null;
      d.path.forEach(function (k) { if (verts[k].label) d.e.labelAt = { x: verts[k].x, y: verts[k].y }; });
      d.e.points = d.reversed ? pts.reverse() : pts;
      d.e.reversed = d.reversed;
    });
    return { crossings: best, layers: layers.length };
  }

  function framesOf(v) {
    // the expanded modules a vertex is drawn inside, outermost first; a long edge's waypoint:
    // those its two ends share
    if (v.frames) return v.frames;
    if (v.unit) {
      var u = v.unit;
      if (u.kind === "input" || u.kind === "loss") v.frames = [];
      else {
        var c = chain(u.module);
        v.frames = (u.kind === "module" ? c.slice(0, -1) : c).filter(function (m) { return m !== ROOT; });
      }
    } else {
      var a = framesOf(v.ends[0]), b = framesOf(v.ends[1]), k = 0;
      while (k < a.length && k < b.length && a[k] === b[k]) k++;
      v.frames = a.slice(0, k);
    }
    return v.frames;
  }
  function keepFramesTogether(L, verts, pos) {
    // a layer's vertices in the same frame made contiguous (each frame, and each vertex outside
    // one, where its members sit on average), frame inside frame
    function arrange(items, level) {
      var groups = new Map(), blocks = [];
      items.forEach(function (x) {
        var f = framesOf(verts[x]);
        if (f.length <= level) { blocks.push({ at: pos[x], items: [x] }); return; }
        var g = groups.get(f[level]);
        if (!g) { g = { at: 0, items: [] }; groups.set(f[level], g); blocks.push(g); }
        g.items.push(x);
        g.at += pos[x];
      });
      groups.forEach(function (g) { g.at /= g.items.length; g.items = arrange(g.items, level + 1); });
      blocks.sort(function (a, b) { return a.at - b.at; });
      return [].concat.apply([], blocks.map(function (b) { return b.items; }));
    }
    return arrange(L, 0);
  }

  // ---- drawing -------------------------------------------------------------------------------

  function el(tag, attrs, parent) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, s, cls) {
    var t = el("text", { x: x, y: y, class: cls }, parent);
    t.textContent = s;
    return t;
  }
  function pathOf(pts) {
    var d = "M" + pts[0].x.toFixed(1) + "," + pts[0].y.toFixed(1);
    for (var i = 1; i < pts.length; i++) {
      var p = pts[i - 1], q = pts[i], my = ((p.y + q.y) / 2).toFixed(1);
      d += " C" + p.x.toFixed(1) + "," + my + " " + q.x.toFixed(1) + "," + my + " " + q.x.toFixed(1) + "," + q.y.toFixed(1);
    }
    return d;
  }

  var svg = document.getElementById("graph");
  var viewport = document.getElementById("viewport");
  var tip = document.getElementById("tip");
  var current = null; // the drawn graph

  function render() {
    tip.hidden = true; // its element may be gone, and with it the mouseleave
    var g = buildGraph();
    var info = layout(g);
    current = g;
    while (viewport.firstChild) viewport.removeChild(viewport.firstChild);
    var frameLayer = el("g", { class: "frames" }, viewport);
    var edgeLayer = el("g", { class: "edges" }, viewport);
    var nodeLayer = el("g", { class: "nodes" }, viewport);
    var labelLayer = el("g", { class: "edge-labels" }, viewport);
    drawFrames(g, frameLayer);
    g.edges.forEach(function (e) {
      if (!e.points) return;
      var p = el("path", {
        d: pathOf(e.points),
        class: e.cut ? "edge cut" : "edge",
        "marker-end": e.cut ? "url(#arrow-cut)" : "url(#arrow)",
        "data-src": e.src, "data-dst": e.dst, "data-cut": e.cut,
      }, edgeLayer);
      if (e.cut) {
        var mid = e.labelAt || p.getPointAtLength(p.getTotalLength() / 2);
        var lg = el("g", { class: "edge-label", "data-cut": e.cut }, labelLayer);
        var label = "✂ " + e.cut;
        var w = cutLabelWidth(e.cut);
        el("rect", { x: mid.x - w / 2, y: mid.y - 9, width: w, height: 18, rx: 4 }, lg);
        text(lg, mid.x, mid.y + 4, label, "");
      }
    });
    g.units.forEach(function (u) { (u.kind === "module" ? drawBox : drawNode)(u, nodeLayer); });
    var bbox = { w: 0, h: 0 };
    g.units.forEach(function (u) { bbox.w = Math.max(bbox.w, u.x + u.w / 2 + 20); bbox.h = Math.max(bbox.h, u.y + u.h / 2 + 20); });
    g.bbox = bbox;
    svg.dataset.boxes = String(g.units.filter(function (u) { return u.kind === "module"; }).length);
    svg.dataset.units = String(g.units.length);
    svg.dataset.crossings = String(info.crossings);
    document.getElementById("view-summary").textContent =
      g.units.length + " shown · " + g.edges.length + " edges · " + info.layers + " layers";
    document.getElementById("depth-value").textContent = String(shownDepth());
  }

  function drawFrames(g, layer) {
    var boxes = new Map(); // expanded module -> bbox of what it contains
    function grow(name, x0, y0, x1, y1) {
      var b = boxes.get(name);
      if (!b) boxes.set(name, { x0: x0, y0: y0, x1: x1, y1: y1 });
      else { b.x0 = Math.min(b.x0, x0); b.y0 = Math.min(b.y0, y0); b.x1 = Math.max(b.x1, x1); b.y1 = Math.max(b.y1, y1); }
    }
    g.units.forEach(function (u) {
      var owner = u.kind === "module" ? modules.get(u.module).parent : u.node.module;
      if (u.kind === "input" || u.kind === "loss" || owner === null || !expanded.has(owner)) return;
      grow(owner, u.x - u.w / 2, u.y - u.h / 2, u.x + u.w / 2, u.y + u.h / 2);
    });
    var names = Array.from(expanded).filter(function (n) { return n !== ROOT; });
    names.sort(function (a, b) { return modules.get(b).depth - modules.get(a).depth; });
    var frames = [];
    names.forEach(function (name) {
      var b = boxes.get(name);
      if (!b) return;
      var f = { x0: b.x0 - FRAME_PAD, y0: b.y0 - FRAME_HEAD + 2, x1: b.x1 + FRAME_PAD, y1: b.y1 + FRAME_PAD };
      var parent = modules.get(name).parent;
      if (parent !== null && expanded.has(parent) && parent !== ROOT) grow(parent, f.x0, f.y0, f.x1, f.y1);
      frames.push([name, f]);
    });
    // drawn outermost first, so an inner frame's title is never under an outer frame
    frames.reverse().forEach(function (pair) {
      var name = pair[0], f = pair[1];
      var fg = el("g", { class: "frame", "data-module": name }, layer);
      el("rect", { x: f.x0, y: f.y0, width: f.x1 - f.x0, height: f.y1 - f.y0, rx: 8 }, fg);
      var head = el("g", { class: "frame-head", "data-module": name }, fg);
      var label = "▾ " + boxText(name).title + (modules.get(name).type ? "  " + modules.get(name).type : "");
      el("rect", { x: f.x0, y: f.y0, width: textWidth(label, "600 11px " + FONT) + 14, height: 17, rx: 6 }, head);
      text(head, f.x0 + 7, f.y0 + 12.5, label, "");
      head.addEventListener("click", function (ev) { onClick(ev, function () { collapse(name); }); });
      hoverable(head, name);
    });
  }

  function drawBox(u, layer) {
    var m = modules.get(u.module);
    var g = el("g", { class: "box", "data-module": u.module, transform: "translate(" + (u.x - u.w / 2).toFixed(1) + "," + (u.y - u.h / 2).toFixed(1) + ")" }, layer);
    var bx = u.w - u.boxW; // the box sits right of its parameter leaf
    var bad = unreachedUnder(u.module);
    if (u.pill) {
      var pg = el("g", { class: bad.length ? "param-leaf unreached" : "param-leaf" }, g);
      el("line", { x1: u.pillW, y1: u.h / 2, x2: bx, y2: u.h / 2 }, pg);
      el("rect", { x: 0, y: u.h / 2 - 9, width: u.pillW, height: 18, rx: 9 }, pg);
      text(pg, u.pillW / 2, u.h / 2 + 3.5, u.pill, "");
    }
    var flow = hasFlow ? flowOf(u.module) : null;
    var fill = flow ? normColor(flow.norm) : null;
    var rect = el("rect", { class: "box-rect", x: bx, y: 0, width: u.boxW, height: u.h, rx: 6 }, g);
    if (fill) { rect.style.fill = fill; g.classList.add("flow"); }
    var ink = fill ? inkFor(fill) : null;
    var t1 = text(g, bx + u.boxW / 2, 17, u.text.title, "box-title");
    var t2 = text(g, bx + u.boxW / 2, 31, u.text.type, "box-type");
    if (ink) { t1.style.fill = ink; t2.style.fill = ink; }
    if (expandable(u.module)) {
      g.classList.add("expandable");
      var plus = text(g, bx + u.boxW - 9, 13, "+", "box-plus");
      if (ink) plus.style.fill = ink;
    }
    if (flow && flow.dead !== null && flow.dead !== undefined && flow.dead >= DEAD_BADGE) {
      var label = "dead " + pct(flow.dead);
      var w = textWidth(label, "600 10px " + FONT) + 10;
      var bg = el("g", { class: "badge dead" }, g);
      el("rect", { x: bx + 4, y: -11, width: w, height: 14, rx: 7 }, bg);
      text(bg, bx + 4 + w / 2, -0.5, label, "");
    }
    if (u.innerCuts.size) {
      var cl = "✂ " + Array.from(u.innerCuts).join(", ");
      var cw = textWidth(cl, "600 10px " + FONT) + 10;
      var cg = el("g", { class: "badge inner-cut" }, g);
      el("rect", { x: bx - 4, y: u.h - 7, width: cw, height: 15, rx: 7 }, cg);
      text(cg, bx - 4 + cw / 2, u.h + 4, cl, "");
    }
    var mod = modules.get(u.module);
    if (mod && mod.calls === 0) g.classList.add("never-ran"); // as the DOT view: white, dotted
    else if (bad.length && bad.length === subtreeParams(u.module).length) g.classList.add("all-unreached");
    if (u.behindCut && u.behindCut === u.members) g.classList.add("behind-cut"); // nothing of it reaches the loss
    g.addEventListener("click", function (ev) {
      onClick(ev, function () {
        if (expandable(u.module)) expand(u.module);
        select(u.module);
      });
    });
    hoverable(g, m.name);
  }

  function drawNode(u, layer) {
    var n = u.node;
    var cls = "fine " + n.kind + (n.unreached ? " unreached" : "") + (n.reaches_loss === false ? " behind-cut" : "");
    var g = el("g", { class: cls, "data-node": String(n.id), "data-module": n.module, transform: "translate(" + (u.x - u.w / 2).toFixed(1) + "," + (u.y - u.h / 2).toFixed(1) + ")" }, layer);
    el("rect", { x: 0, y: 0, width: u.w, height: u.h, rx: n.kind === "op" ? 4 : u.h / 2 }, g);
    text(g, u.w / 2, u.h / 2 + 4, u.text, "");
    if (n.dead !== undefined && n.dead !== null && n.dead >= DEAD_BADGE) {
      var label = "dead " + pct(n.dead);
      var w = textWidth(label, "600 10px " + FONT) + 10;
      var bg = el("g", { class: "badge dead" }, g);
      el("rect", { x: u.w - 6, y: -9, width: w, height: 14, rx: 7 }, bg);
      text(bg, u.w - 6 + w / 2, 1.5, label, "");
    }
    g.addEventListener("mouseenter", function (ev) { showTip(ev, nodeTip(n)); });
    g.addEventListener("mousemove", moveTip);
    g.addEventListener("mouseleave", hideTip);
  }

  // ---- interaction: pan, zoom, expand -------------------------------------------------------

  var view = { x: 0, y: 0, k: 1 };
  function applyView() {
    viewport.setAttribute("transform", "translate(" + view.x.toFixed(2) + "," + view.y.toFixed(2) + ") scale(" + view.k.toFixed(4) + ")");
    document.getElementById("zoom-value").textContent = Math.round(view.k * 100) + "%";
  }
  function zoomAt(factor, px, py) {
    var k = Math.max(0.03, Math.min(6, view.k * factor));
    view.x = px - (px - view.x) * (k / view.k);
    view.y = py - (py - view.y) * (k / view.k);
    view.k = k;
    applyView();
  }
  var TOP = 44; // below the toolbar
  var LEGIBLE = 0.45; // the smallest zoom whose labels still read (12px titles at 5.4px)
  function fit(readable) {
    // the whole graph; `readable`: when the whole graph would need a zoom below LEGIBLE, the
    // full width (still at least LEGIBLE) and the top of the graph instead
    var r = svg.getBoundingClientRect(), b = current.bbox, room = r.height - TOP - 10;
    var kw = (r.width - 20) / b.w, kh = room / b.h;
    var k = Math.min(kw, kh, 1.25);
    if (readable && k < LEGIBLE) k = Math.max(Math.min(kw, 1), LEGIBLE);
    view.k = k;
    view.x = b.w * k <= r.width - 20 ? (r.width - b.w * k) / 2 : 10;
    view.y = TOP + (b.h * k <= room ? (room - b.h * k) / 2 : 0);
    applyView();
  }
  function unitsBox(name) {
    // the drawing's box around a module's units (its box, or its cluster's contents)
    var box = null;
    current.units.forEach(function (u) {
      var m = u.kind === "module" ? u.module : u.node && u.node.module;
      if (m === undefined || !isUnder(m, name) || u.x === undefined) return;
      var b = [u.x - u.w / 2, u.y - u.h / 2, u.x + u.w / 2, u.y + u.h / 2]; // x, y: the centre
      box = box ? [Math.min(box[0], b[0]), Math.min(box[1], b[1]), Math.max(box[2], b[2]), Math.max(box[3], b[3])] : b;
    });
    return box;
  }
  function keepInView(name) {
    // after an expand: the module's units inside the window (zoomed out, not below LEGIBLE,
    // when they do not fit; then their top left corner shows)
    var b = unitsBox(name);
    if (!b) return;
    var r = svg.getBoundingClientRect(), M = 12, room = r.height - TOP - M;
    var w = b[2] - b[0], h = b[3] - b[1];
    var k = Math.min(view.k, (r.width - 2 * M) / w, room / h);
    if (k < view.k) {
      var k2 = Math.max(k, Math.min(view.k, LEGIBLE));
      zoomAt(k2 / view.k, view.x + b[0] * view.k, view.y + b[1] * view.k);
    }
    var x1 = view.x + b[2] * view.k, y1 = view.y + b[3] * view.k;
    if (x1 > r.width - M) view.x -= x1 - (r.width - M); // the right edge in, then the left
    var x0 = view.x + b[0] * view.k;
    if (x0 < M) view.x += M - x0;
    if (y1 > r.height - M) view.y -= y1 - (r.height - M);
    var y0 = view.y + b[1] * view.k;
    if (y0 < TOP) view.y += TOP - y0;
    applyView();
  }
  function centreOf() { var r = svg.getBoundingClientRect(); return [r.width / 2, r.height / 2]; }

  var drag = null, dragged = false;
  svg.addEventListener("pointerdown", function (ev) {
    if (ev.button !== 0) return;
    drag = { x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y, id: ev.pointerId };
    dragged = false;
  });
  window.addEventListener("pointermove", function (ev) {
    if (!drag) return;
    var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (!dragged && Math.abs(dx) + Math.abs(dy) < 4) return;
    dragged = true;
    svg.classList.add("panning");
    view.x = drag.vx + dx;
    view.y = drag.vy + dy;
    applyView();
  });
  window.addEventListener("pointerup", function () { drag = null; svg.classList.remove("panning"); });
  svg.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    var r = svg.getBoundingClientRect();
    zoomAt(Math.exp(-ev.deltaY * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
  }, { passive: false });
  function onClick(ev, action) {
    ev.stopPropagation();
    if (dragged) return; // the end of a pan, not a click
    action();
  }
  document.getElementById("zoom-in").addEventListener("click", function () { var c = centreOf(); zoomAt(1.25, c[0], c[1]); });
  document.getElementById("zoom-out").addEventListener("click", function () { var c = centreOf(); zoomAt(0.8, c[0], c[1]); });
  document.getElementById("zoom-fit").addEventListener("click", function () { fit(false); });
  document.getElementById("depth-less").addEventListener("click", function () { setDepth(shownDepth() - 1); });
  document.getElementById("depth-more").addEventListener("click", function () { setDepth(shownDepth() + 1); });
  document.getElementById("depth-reset").addEventListener("click", function () { setDepth(DATA.depth); });

  function shownDepth() {
    // the deepest level of boxes on screen
    var d = 0;
    expanded.forEach(function (n) { d = Math.max(d, modules.get(n).depth + 1); });
    return d;
  }
  function rerender(keepAnchor) {
    // keep the clicked module where it was, so the view does not jump
    var before = keepAnchor ? anchorPoint(keepAnchor) : null;
    render();
    var after = keepAnchor ? anchorPoint(keepAnchor) : null;
    if (before && after) {
      view.x += (before[0] - after[0]) * view.k;
      view.y += (before[1] - after[1]) * view.k;
      applyView();
    }
  }
  function anchorPoint(name) {
    // where the module (or its first shown descendant) is drawn
    var best = null;
    current.units.forEach(function (u) {
      var m = u.kind === "module" ? u.module : u.node.module;
      if (m !== undefined && isUnder(m, name) && (!best || u.y < best[1])) best = [u.cx !== undefined ? u.cx : u.x, u.y];
    });
    return best;
  }
  function expand(name) { expanded.add(name); rerender(name); keepInView(name); }
  function collapse(name) {
    expanded.forEach(function (n) { if (isUnder(n, name)) expanded.delete(n); });
    rerender(name);
    select(name);
  }
  function setDepth(d) {
    d = Math.max(0, d);
    expandToDepth(d);
    render();
    fit(true);
  }

  // ---- the side panel and tooltips ----------------------------------------------------------

  function hoverable(g, name) {
    g.addEventListener("mouseenter", function (ev) { showTip(ev, moduleTip(name)); });
    g.addEventListener("mousemove", moveTip);
    g.addEventListener("mouseleave", hideTip);
  }
  function moduleLines(name) {
    var m = modules.get(name);
    var lines = [[moduleTitle(name), "strong"], [m.type || "module", "type"]];
    var params = subtreeParams(name);
    if (params.length) {
      var shown = params.slice(0, 8).map(function (p) { return name && p.indexOf(name + ".") === 0 ? p.slice(name.length + 1) : p; });
      var numel = subtreeNumel(name);
      lines.push([params.length + " parameter" + (params.length > 1 ? "s" : "") + (numel ? " (" + count(numel) + " elements)" : "") + ": " + shown.join(", ") + (params.length > 8 ? ", …" : ""), ""]);
    }
    var bad = unreachedUnder(name);
    if (bad.length) lines.push([bad.length + " with no path to the loss", "bad"]);
    if (m.source) lines.push([m.source.file + ":" + m.source.line, "loc"]);
    if (m.calls > 1) lines.push(["its forward ran " + m.calls + " times", ""]);
    var f = hasFlow ? flowOf(name) : null;
    if (f) {
      lines.push(["gradient norm " + sci(f.norm) + (f.rows > 1 ? " (over " + f.rows + " modules' parameters)" : ""), ""]);
      if (f.dead !== null && f.dead !== undefined) lines.push(["dead " + pct(f.dead), f.dead >= DEAD_BADGE ? "bad" : ""]);
    }
    if (expandable(name)) lines.push([expanded.has(name) ? "click the frame's title to collapse" : "click to expand", "hint"]);
    return lines;
  }
  function moduleTip(name) { return moduleLines(name); }
  function nodeTip(n) {
    var lines = [[n.kind === "param" ? n.qualified : n.label, "strong"], [n.kind + " in " + moduleTitle(n.module), "type"]];
    if (n.shape && n.shape.length) lines.push(["shape (" + n.shape.join(", ") + ")", ""]);
    if (n.unreached) lines.push([unreached.get(n.qualified).reason, "bad"]);
    if (n.dead !== undefined && n.dead !== null) lines.push(["dead " + pct(n.dead) + " (zero for every example)", n.dead >= DEAD_BADGE ? "bad" : ""]);
    return lines;
  }
  function fillLines(box, lines) {
    while (box.firstChild) box.removeChild(box.firstChild);
    lines.forEach(function (l) {
      var d = document.createElement("div");
      d.className = l[1];
      d.textContent = l[0];
      box.appendChild(d);
    });
  }
  function showTip(ev, lines) { fillLines(tip, lines); tip.hidden = false; moveTip(ev); }
  function moveTip(ev) {
    var x = ev.clientX + 14, y = ev.clientY + 14;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth) x = ev.clientX - w - 10;
    if (y + h > window.innerHeight) y = ev.clientY - h - 10;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function hideTip() { tip.hidden = true; }
  function select(name) {
    var box = document.getElementById("selected");
    fillLines(box, moduleLines(name));
    document.getElementById("selected-section").hidden = false;
  }

  function panel() {
    document.getElementById("target").textContent = DATA.target;
    var meta = ["gradtool " + DATA.version, (DATA.autograd_nodes !== undefined ? DATA.autograd_nodes : DATA.nodes.length) + " autograd nodes", DATA.modules.length + " modules"];
    if (DATA.found_by) meta.push(DATA.found_by);
    document.getElementById("meta").textContent = meta.join(" · ");
    var cuts = DATA.cuts || [];
    document.getElementById("cuts-count").textContent = String(cuts.length);
    var list = document.getElementById("cuts");
    if (!cuts.length) list.appendChild(li("no cut: every value reaches the loss with its gradient", "none"));
    cuts.forEach(function (c) {
      var item = li("", "cut");
      var head = document.createElement("div");
      var kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = c.kind;
      head.appendChild(kind);
      var from = c.producer_text || moduleTitle(c.producer);
      var to = c.consumer === null ? "(nothing)" : c.consumer_text || moduleTitle(c.consumer);
      head.appendChild(document.createTextNode(" " + from + " → " + to));
      item.appendChild(head);
      if (c.location) item.appendChild(div(c.location.file + ":" + c.location.line + (c.location.what ? "  " + c.location.what : ""), "loc"));
      // c.text says the head and the line again in one sentence (the text summary's words)
      if (c.params && c.params.length) item.appendChild(div("cuts off " + c.params.join(", "), "text"));
      list.appendChild(item);
    });
    var un = DATA.unreached || [];
    document.getElementById("unreached-count").textContent = String(un.length);
    var ul = document.getElementById("unreached");
    if (!un.length) ul.appendChild(li("every parameter reaches the loss", "none"));
    un.forEach(function (u) {
      var item = li("", "unreached");
      item.appendChild(div(u.name, "name"));
      item.appendChild(div(u.reason, "text"));
      ul.appendChild(item);
    });
    var warn = DATA.warnings || [];
    if (warn.length) {
      document.getElementById("warnings-section").hidden = false;
      var wl = document.getElementById("warnings");
      warn.forEach(function (w) { wl.appendChild(li(w, "")); });
    }
    if (hasFlow) {
      document.getElementById("legend-section").hidden = false;
      var stops = [];
      for (var i = 0; i <= 10; i++) stops.push(rampColor(i / 10));
      document.getElementById("legend-ramp").style.background = "linear-gradient(to right," + stops.join(",") + ")";
      document.getElementById("legend-lo").textContent = sci(Math.pow(10, logLo));
      document.getElementById("legend-hi").textContent = sci(Math.pow(10, logHi));
      document.getElementById("legend-dead").textContent = "dead ≥ " + pct(DEAD_BADGE);
    }
  }
  function li(s, cls) { var e = document.createElement("li"); e.className = cls; if (s) e.textContent = s; return e; }
  function div(s, cls) { var e = document.createElement("div"); e.className = cls; e.textContent = s; return e; }

  panel();
  render();
  fit(true);
  window.addEventListener("resize", function () { fit(true); });
  svg.dataset.ready = "true";
  // for a console: the state behind the drawing
  window.gradtoolGraph = {
    data: DATA, view: view, setDepth: setDepth, expand: expand, collapse: collapse,
    expanded: function () { return Array.from(expanded); },
    expandAll: function () { modules.forEach(function (m) { if (expandable(m.name)) expanded.add(m.name); }); render(); fit(false); },
    timeRender: function () { var t = performance.now(); render(); return performance.now() - t; },
  };
})();
