#!/usr/bin/env node
// `vcl-capture` in a clone, with no build: runs the TypeScript CLI through tsx (a devDependency). The
// installed package's bin is the compiled dist/src/cli/main.js (`npm run build`); this file is not shipped.
import { register } from 'tsx/esm/api';

register();
await import('./main.ts');
