// Bundles the CLI — dist/cli/main.js, what it imports and its dependencies —
// into one file, dist/cli.cjs, which bin/layergraph.js loads. Resolving and
// compiling ~100 modules one by one was most of a no-op run's start-up
// (issue 5). The lazy imports stay lazy: esbuild defers each one's evaluation.
// CommonJS, not ESM, because Node 20 can keep V8's compiled code only for a
// script (vm.Script's cachedData), which the launcher does.
// Run by `npm run build` after tsc and compile-schema; dist/'s modules stay for
// the library entry (dist/index.js), the tests, and a dist/ built by plain tsc.
import { build } from 'esbuild';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PRECOMPILED } from '../dist/config/schema-options.js';

const root = fileURLToPath(new URL('..', import.meta.url));

const { metafile, outputFiles } = await build({
  absWorkingDir: root,
  entryPoints: ['dist/cli/main.js'],
  outfile: 'dist/cli.cjs',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // A script has no loader for `import()` (not without a flag on Node 20.10): the lazy
  // imports of built-ins (node:https…) become require() calls, as lazy as before.
  supported: { 'dynamic-import': false },
  // The modules find their package (schemas/, package.json) from import.meta.url; a script has __filename.
  // They were ES modules, so strict: the directive must come first, before what the banner declares.
  define: { 'import.meta.url': '__layergraphModuleUrl' },
  banner: { js: `"use strict";\nconst __layergraphModuleUrl = require('node:url').pathToFileURL(__filename).href;` },
  // The schema validator compile-schema precompiled, inlined: see schema-errors.ts.
  inject: ['layergraph:precompiled-validator'],
  plugins: [precompiledValidator()],
  sourcemap: 'linked',
  sourcesContent: false,
  metafile: true,
  write: false,
  logLevel: 'warning',
});

// Any import() left would fail at run time, so fail the build instead.
const dynamic = Object.values(metafile.outputs).flatMap((o) => o.imports.filter((i) => i.kind === 'dynamic-import').map((i) => i.path));
if (dynamic.length) throw new Error(`bundle-cli: import() of ${dynamic.join(', ')} left in dist/cli.cjs; import it statically or bundle it`);

// Each file replaced whole (a CLI started meanwhile reads the old bundle or the new, not half of one).
for (const { path: file, contents } of outputFiles) {
  mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, contents);
    renameSync(tmp, file);
  } finally {
    rmSync(tmp, { force: true }); // after a failure; `npm pack` would ship it
  }
}
// Compiled code kept for the bundle just replaced: of no more use (the launcher would also see that).
rmSync(`${root}dist/cli.cjs.cache`, { force: true });

/** A module exporting LAYERGRAPH_BUNDLED_VALIDATOR: loads the validator in dist/config/schema-validate.cjs, bundled. */
function precompiledValidator() {
  return {
    name: 'precompiled-validator',
    setup(b) {
      b.onResolve({ filter: /^layergraph:precompiled-validator$/ }, (args) => ({ path: args.path, namespace: 'layergraph' }));
      b.onLoad({ filter: /.*/, namespace: 'layergraph' }, () => ({
        // A function, so the validator's module runs when a build file is checked, not at every start.
        contents: `export const LAYERGRAPH_BUNDLED_VALIDATOR = () => require('./dist/config/${PRECOMPILED}');\n`,
        resolveDir: root,
      }));
    },
  };
}
