// @vitest-environment node
// The bindings' size budget: at most 3 KB minified and gzipped, React and
// the client left out (peers), and no runtime dependencies at all.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

import { build } from "esbuild";
import { expect, it } from "vitest";

const BUDGET = 3 * 1024;

it(`is at most ${BUDGET} bytes minified and gzipped`, async () => {
  const out = await build({
    entryPoints: [new URL("../src/index.ts", import.meta.url).pathname],
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2022",
    external: ["react", "@chat-relay/client"],
    write: false,
    logLevel: "silent",
  });
  const bytes = gzipSync(out.outputFiles[0].contents, { level: 9 }).length;
  console.log(`@chat-relay/react: ${bytes} bytes min+gzip (budget ${BUDGET})`);
  expect(bytes).toBeLessThanOrEqual(BUDGET);
});

it("has no runtime dependencies, only peers", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  expect(pkg.dependencies ?? {}).toEqual({});
  expect(Object.keys(pkg.peerDependencies).sort()).toEqual(["@chat-relay/client", "react"]);
});
