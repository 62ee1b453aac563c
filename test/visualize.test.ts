/** The committed diagrams are the machines as they are now, and the renderers draw every state and edge. */
import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { provisioners } from '../machines/index.js';
import { generateVisualizations } from '../src/visualize/generate.js';
import { toMermaid } from '../src/visualize/mermaid.js';
import { diagramOf } from '../src/visualize/model.js';

const DIR = new URL('../visualizations/', import.meta.url).pathname;

describe('visualizations/', () => {
  it('matches what the machines generate (run `npm run visualize` after changing a machine)', async () => {
    const files = await generateVisualizations();
    expect(readdirSync(DIR).sort()).toEqual([...files.keys()].sort());
    for (const [name, content] of files) {
      expect(readFileSync(`${DIR}${name}`, 'utf8'), `visualizations/${name} is stale`).toBe(content);
    }
  });

  it('draws every state and every declared transition target', () => {
    const machine = provisioners.vmware.machine;
    const text = toMermaid(diagramOf(machine));
    for (const key of ['repair_disk', 'clone_disk', 'remove_clone', 'completed', 'cancelled']) {
      expect(text).toMatch(new RegExp(`as (capturing__|cleanup__)?${key}\\n`));
    }
    expect(text).toContain('capturing__clone_disk --> capturing__repair_disk : error [mayRepairOnce]');
    expect(text).toContain('capturing --> cleanup : CANCEL');
    expect(text).toContain('capturing__pre_capture --> cleanup : done [osFailed]');
  });

  it('renders valid SVG through Graphviz', async () => {
    const svg = (await generateVisualizations()).get('xcat.svg') ?? '';
    expect(svg).toMatch(/^<\?xml[\s\S]*<svg[\s\S]*<\/svg>\s*$/);
    expect(svg).toContain('watch_upload');
  });
});
