// dist/ and the demo page's bundle (demo/app.js: demo/app.jsx with React,
// the React bindings and dist/) are committed; the relay binary embeds the
// bundle. Check that both are what their sources build to, so the page never
// runs stale code.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const tmp = mkdtempSync(path.join(os.tmpdir(), "chat-relay-dist-"));
try {
  execFileSync(process.execPath, [path.join(root, "node_modules/typescript/bin/tsc"), "-p", root, "--outDir", tmp], {
    stdio: "inherit",
  });
  const fresh = readdirSync(tmp).sort();
  const committed = readdirSync(path.join(root, "dist")).sort();
  const stale = fresh.filter((f) => !committed.includes(f) || readFileSync(path.join(tmp, f), "utf8") !== readFileSync(path.join(root, "dist", f), "utf8"));
  const extra = committed.filter((f) => !fresh.includes(f));
  if (stale.length || extra.length) {
    console.error(`dist/ is stale (${[...stale, ...extra].join(", ")}): run \`npm run build\` in clients/typescript and commit dist/`);
    process.exit(1);
  }
  console.log(`dist/ matches src/ (${fresh.length} files)`);
  const bundle = path.join(tmp, "demo-app.js");
  execFileSync(process.execPath, [path.join(root, "scripts/bundle-demo.mjs"), bundle], { stdio: "inherit" });
  if (readFileSync(bundle, "utf8") !== readFileSync(path.join(root, "demo/app.js"), "utf8")) {
    console.error("demo/app.js is stale: run `npm run build` in clients/typescript and commit it");
    process.exit(1);
  }
  console.log("demo/app.js matches demo/app.jsx, ../react/src and dist/");
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
