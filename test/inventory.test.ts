/** Inventory files: the documented example is valid, and each kind of mistake is named with its line. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { inventoryJsonSchema } from '../src/inventory/json-schema.js';
import { loadInventoryFile, parseInventoryText } from '../src/inventory/load.js';

const EXAMPLE = new URL('../examples/inventory.yaml', import.meta.url).pathname;

const base = `
hosts:
  h1: { address: 127.0.0.1, user: root, privateKeyPath: /k }
repositories:
  r1: { host: h1, path: /srv/images }
computers:
  pc1:
    os: linux
    host: h1
    provisioner: { type: libvirt, host: h1, domain: pc1 }
    repository: r1
`;

function problem(text: string): string {
  try {
    parseInventoryText(text, 'inv.yaml');
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('the inventory was accepted');
}

describe('inventory files', () => {
  it('accepts the documented example and applies defaults', () => {
    const inv = loadInventoryFile(EXAMPLE);
    expect(Object.keys(inv.computers)).toEqual(['vm-ubuntu-1', 'vm-win-1', 'node-7']);
    expect(inv.hosts.esxi1?.port).toBe(22);
    expect(inv.hosts.esxi1?.maxCaptures).toBe(5);
    expect(parseInventoryText(base).computers.pc1?.reservationUsers).toEqual([]);
  });

  it('names a missing field with its entry and line', () => {
    const msg = problem(base.replace(', domain: pc1', ''));
    expect(msg).toMatch(/inv\.yaml:10: computers\.pc1\.provisioner\.domain: /);
  });

  it('names a wrong type', () => {
    expect(problem(base.replace('user: root', 'user: 42'))).toMatch(/hosts\.h1\.user: .*string/i);
  });

  it('names an unknown provisioner and lists the known ones', () => {
    expect(problem(base.replace('type: libvirt', 'type: hyperv'))).toMatch(
      /computers\.pc1\.provisioner\.type: .*'libvirt' \| 'vmware' \| 'xcat'/,
    );
  });

  it('refuses a duplicate computer', () => {
    const dup = `${base}  pc1:\n    os: linux\n`;
    expect(problem(dup)).toMatch(/inv\.yaml:\d+:\d+: Map keys must be unique/);
  });

  it('refuses illegal names and unknown references', () => {
    expect(problem(base.replace('  pc1:\n', '  "pc1; rm -rf /":\n'))).toMatch(
      /computers\.pc1; rm -rf \/: invalid name: use letters, digits/,
    );
    expect(problem(base.replace('repository: r1', 'repository: nope'))).toMatch(
      /computers\.pc1\.repository: unknown repository 'nope'; repositories: r1/,
    );
    expect(problem(base.replace('path: /srv/images', 'path: srv/../images'))).toMatch(/absolute path/);
    expect(problem(base.replace('user: root,', 'user: root, passphrase: x,'))).toMatch(
      /Unrecognized key.*passphrase/,
    );
  });

  it('ships a current JSON Schema for editors', () => {
    const shipped = readFileSync(new URL('../examples/inventory.schema.json', import.meta.url), 'utf8');
    expect(shipped, 'run: npx tsx -e "…inventoryJsonSchema()" > examples/inventory.schema.json').toBe(
      inventoryJsonSchema(),
    );
  });
});
