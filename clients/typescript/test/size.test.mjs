// The client's size budget: at most 10 KB minified and gzipped, with no
// runtime dependencies (what an app pays for it).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

import { build } from "esbuild";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const BUDGET = 10 * 1024;

test(`the client is at most ${BUDGET} bytes minified and gzipped`, async () => {
  const out = await build({
    entryPoints: [path.join(root, "dist/index.js")],
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2022",
    write: false,
    logLevel: "silent",
  });
  const bytes = gzipSync(out.outputFiles[0].contents, { level: 9 }).length;
  console.log(`@chat-relay/client: ${bytes} bytes min+gzip (budget ${BUDGET})`);
  assert.ok(bytes <= BUDGET, `${bytes} bytes min+gzip, over the ${BUDGET} budget`);
});

test("no runtime dependencies", () => {
  const pkg = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8"));
  assert.deepEqual(Object.keys(pkg.dependencies ?? {}), []);
});
