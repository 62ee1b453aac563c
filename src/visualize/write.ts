/** `npm run visualize`: (re)writes `visualizations/` from the machines. */
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { packageFile } from '../package.js';
import { generateVisualizations } from './generate.js';

export async function writeVisualizations(dir: string): Promise<string[]> {
  const files = await generateVisualizations();
  await mkdir(dir, { recursive: true });
  // Diagrams of machines that no longer exist must not linger.
  for (const name of await readdir(dir)) {
    if (!files.has(name)) await rm(join(dir, name));
  }
  for (const [name, content] of files) await writeFile(join(dir, name), content);
  return [...files.keys()];
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = fileURLToPath(packageFile('visualizations'));
  const written = await writeVisualizations(dir);
  console.log(`wrote ${written.length} files to ${dir}: ${written.join(', ')}`);
}
