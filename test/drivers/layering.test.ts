/**
 * The driver contract's direction: the runner imports drivers and provisioners, never the other way. A
 * driver needs only `src/drivers/contract.ts` (StepRun, StepFn, Remote, sleep, pollUntil) to be run.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = new URL('../../src/', import.meta.url).pathname;

function sourceFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? sourceFiles(path) : path.endsWith('.ts') ? [path] : [];
  });
}

describe('src/drivers and src/provisioners imports', () => {
  it('never import src/runner', () => {
    const files = [...sourceFiles(join(SRC, 'drivers')), ...sourceFiles(join(SRC, 'provisioners'))];
    expect(files.length).toBeGreaterThan(0);
    const offenders: string[] = [];
    for (const file of files) {
      const text = readFileSync(file, 'utf8');
      for (const m of text.matchAll(/\b(?:from|import)\s*\(?\s*['"]([^'"]+)['"]/g)) {
        const spec = m[1] as string;
        if (spec.startsWith('.') && join(file, '..', spec).startsWith(join(SRC, 'runner')))
          offenders.push(`${relative(SRC, file)}: ${spec}`);
      }
    }
    expect(offenders).toEqual([]);
  });
});
