/**
 * What a completed capture stored, checked with the real tools: the libvirt and xCAT images are one file
 * whose sha256 is the source's; VMware's is a 2gbsparse vmdk set (descriptor, extents, reference .vmx)
 * whose recorded sha256 is that of its `sha256sum` manifest, which real `qemu-img` opens and finds equal to
 * the source disk.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { expect } from 'vitest';
import type { Inventory } from '../../src/inventory/schema.js';
import type { Lab } from '../../src/lab/types.js';

export interface StoredArtifact {
  path: string;
  sizeBytes: number;
  sha256: string;
  format: string;
}

export interface StoredSet {
  /** Real paths of every file of the set, by name. */
  files: Map<string, string>;
  /** Allocated bytes of the set on the repository's disk. */
  allocatedBytes: number;
  virtualBytes: number;
}

/** `qemu-img info --output=json` of a real path. */
export function qemuInfo(real: string): {
  format: string;
  'virtual-size': number;
  'format-specific'?: { data?: { 'create-type'?: string; extents?: { filename: string }[] } };
} {
  return JSON.parse(execFileSync('qemu-img', ['info', '--output=json', real], { encoding: 'utf8' }));
}

/**
 * The VMware set at `artifact.path` on `host`: a loadable twoGbMaxExtentSparse vmdk, every file in the
 * manifest whose sha256 was recorded, `sha256sum -c` and `qemu-img check` clean, identical to `sourceReal`
 * (the raw data of the source disk) and compact.
 */
export async function expectVmdkSet(
  lab: Lab,
  host: string,
  artifact: StoredArtifact,
  sourceReal: string,
): Promise<StoredSet> {
  expect(artifact.format).toBe('vmdk');
  const descriptor = await lab.realPath(host, artifact.path);
  const dir = dirname(descriptor);
  const manifest = `${descriptor}.sha256`;
  const listed = readFileSync(manifest);
  expect(createHash('sha256').update(listed).digest('hex')).toBe(artifact.sha256);
  const names = listed
    .toString('utf8')
    .trim()
    .split('\n')
    .map((l) => l.slice(66));
  const check = spawnSync('sha256sum', ['-c', '--strict', manifest], { cwd: dir, encoding: 'utf8' });
  expect(check.status, check.stdout + check.stderr).toBe(0);
  const info = qemuInfo(descriptor);
  expect(info.format).toBe('vmdk');
  expect(info['format-specific']?.data?.['create-type']).toBe('twoGbMaxExtentSparse');
  const extents = (info['format-specific']?.data?.extents ?? []).map((e) => e.filename.split('/').at(-1));
  const base = artifact.path.split('/').at(-1) ?? '';
  const image = base.replace(/\.vmdk$/, '');
  expect(extents.length).toBeGreaterThan(0);
  expect(names.sort()).toEqual([base, `${image}.vmx`, ...extents].sort());
  expect(spawnSync('qemu-img', ['check', descriptor], { encoding: 'utf8' }).status).toBe(0);
  const compare = spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', sourceReal, descriptor], {
    encoding: 'utf8',
  });
  expect(compare.stdout + compare.stderr).toContain('Images are identical.');
  expect(info['virtual-size']).toBe(statSync(sourceReal).size);
  const files = new Map<string, string>();
  let sizeBytes = 0;
  let allocatedBytes = 0;
  for (const f of readdirSync(dir).filter((f) => f.startsWith(image))) {
    const st = statSync(join(dir, f));
    files.set(f, join(dir, f));
    if (names.includes(f)) sizeBytes += st.size;
    allocatedBytes += st.blocks * 512;
  }
  // The set and its manifest, nothing else (no temporary or staging file).
  expect([...files.keys()].sort()).toEqual([...names, `${base}.sha256`].sort());
  expect(artifact.sizeBytes).toBe(sizeBytes);
  return { files, allocatedBytes, virtualBytes: info['virtual-size'] };
}

/** The image a completed capture of `computer` stored holds the source disk (`source`: its sha256). */
export async function expectStoredImage(
  lab: Lab,
  computer: string,
  artifact: StoredArtifact,
  source: string,
  /** The inventory the capture ran with, when not the lab's own (its repository may differ). */
  inventory: Inventory = lab.inventory,
): Promise<void> {
  const repo = inventory.repositories[inventory.computers[computer]?.repository ?? ''];
  if (!repo) throw new Error(`no repository for ${computer}`);
  const c = lab.computer(computer);
  if (c.provisioner === 'vmware') {
    const set = await expectVmdkSet(lab, repo.host, artifact, c.disk.real);
    // The lab's disks are mostly holes: the compact set holds far less than the virtual size.
    expect(set.allocatedBytes).toBeLessThan(set.virtualBytes / 2);
    return;
  }
  expect(artifact.sha256).toBe(source);
  expect(await lab.sha256(repo.host, artifact.path)).toBe(source);
}
