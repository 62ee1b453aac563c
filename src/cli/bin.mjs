#!/usr/bin/env node
// The installed `vcl-capture` command: runs the TypeScript CLI through tsx (no build step).
import { register } from 'tsx/esm/api';

register();
await import('./main.ts');
