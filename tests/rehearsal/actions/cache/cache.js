// The rehearsal's actions/cache: main restores, post saves (see action.yml).
const fs = require("fs");
const path = require("path");

const input = (name) => (process.env[`INPUT_${name.replace(/ /g, "_").toUpperCase()}`] || "").trim();
const store = path.join(process.env.PDP_REHEARSAL_STORE || "", "cache");
const target = input("path").replace(/^~(?=\/)/, process.env.HOME);
const key = input("key");
const state = (name) => process.env[`STATE_${name}`] || "";
const safe = (k) => k.replace(/[^\w.-]/g, "_");

function appendFile(variable, line) {
  fs.appendFileSync(process.env[variable], line + "\n");
}

function restore() {
  const entries = fs.existsSync(store) ? fs.readdirSync(store) : [];
  let hit = entries.includes(safe(key)) ? safe(key) : "";
  const exact = hit !== "";
  if (!hit) {
    for (const prefix of input("restore-keys").split("\n").map((s) => s.trim()).filter(Boolean)) {
      const candidates = entries
        .filter((e) => e.startsWith(safe(prefix)))
        .map((e) => [fs.statSync(path.join(store, e)).mtimeMs, e])
        .sort((a, b) => b[0] - a[0]);
      if (candidates.length) { hit = candidates[0][1]; break; }
    }
  }
  if (hit) {
    fs.mkdirSync(target, { recursive: true });
    fs.cpSync(path.join(store, hit), target, { recursive: true, preserveTimestamps: true });
    console.log(`cache (stand-in): restored ${hit} into ${target}${exact ? " (exact key)" : ""}`);
  } else {
    console.log(`cache (stand-in): no entry for ${key}`);
  }
  appendFile("GITHUB_OUTPUT", `cache-hit=${exact}`);
  appendFile("GITHUB_STATE", `exact=${exact}`);
  appendFile("GITHUB_STATE", `done=1`);
}

function save() {
  if (!fs.existsSync(target)) {
    console.log(`cache (stand-in): ${target} does not exist, nothing saved`);
    return;
  }
  if (state("exact") === "true") {
    console.log(`cache (stand-in): exact hit on ${key}, not saved again`);
    return;
  }
  const dest = path.join(store, safe(key));
  fs.rmSync(dest, { recursive: true, force: true });
  fs.mkdirSync(store, { recursive: true });
  fs.cpSync(target, dest, { recursive: true, preserveTimestamps: true });
  console.log(`cache (stand-in): saved ${target} as ${key}`);
}

// actions/cache: main restores, post saves; cache/restore and cache/save: one each.
const mode = process.env.PDP_CACHE_MODE || "";
if (mode === "save" || (mode !== "restore" && state("done"))) { save(); } else { restore(); }
