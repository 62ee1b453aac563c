/** Inventory files: the documented example is valid, and each kind of mistake is named with its line. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { VclError } from '../src/errors.js';
import { inventoryJsonSchema } from '../src/inventory/json-schema.js';
import { loadInventoryFile, parseInventoryText } from '../src/inventory/load.js';
import { parseInventory } from '../src/inventory/schema.js';

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
    expect(Object.keys(inv.computers)).toEqual(['vm-ubuntu-1', 'vm-win-1', 'node-7', 'vm-pve-1']);
    expect(inv.computers['vm-pve-1']?.provisioner).toEqual({
      type: 'proxmox',
      host: 'pve1',
      vmid: 123,
      format: 'qcow2',
    });
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

  it('checks Proxmox settings: a VM id, a disk device name, nothing unknown', () => {
    const pve = base.replace(
      '{ type: libvirt, host: h1, domain: pc1 }',
      '{ type: proxmox, host: h1, vmid: 101 }',
    );
    expect(parseInventoryText(pve).computers.pc1?.provisioner).toEqual({
      type: 'proxmox',
      host: 'h1',
      vmid: 101,
      format: 'qcow2',
    });
    expect(problem(pve.replace('vmid: 101', 'vmid: 99'))).toMatch(
      /computers\.pc1\.provisioner\.vmid: Proxmox VM ids start at 100/,
    );
    expect(problem(pve.replace('vmid: 101', 'vmid: 1.5'))).toMatch(/vmid: a VM id is a whole number/);
    expect(problem(pve.replace(', vmid: 101', ''))).toMatch(/computers\.pc1\.provisioner\.vmid: /);
    expect(problem(pve.replace('vmid: 101', 'vmid: 101, disk: "scsi0;rm"'))).toMatch(
      /provisioner\.disk: a disk device as qm config names it, e.g. scsi0/,
    );
    expect(problem(pve.replace('vmid: 101', 'vmid: 101, stagingDir: tmp'))).toMatch(
      /provisioner\.stagingDir: must be an absolute path/,
    );
    expect(problem(pve.replace('vmid: 101', 'vmid: 101, domain: pc1'))).toMatch(/Unrecognized key.*domain/);
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

  it('takes a libvirt boot test switch, off by default, and says what a wrong one lacks', () => {
    const withBoot = (b: string) =>
      base.replace(
        '{ type: libvirt, host: h1, domain: pc1 }',
        `{ type: libvirt, host: h1, domain: pc1, bootTest: ${b} }`,
      );
    expect(parseInventoryText(withBoot('{ enabled: true }')).computers.pc1?.provisioner).toMatchObject({
      bootTest: { enabled: true, check: 'console', pattern: 'login:' },
    });
    expect(
      parseInventoryText(withBoot('{ enabled: true, check: ssh, port: 2222 }')).computers.pc1?.provisioner,
    ).toMatchObject({ bootTest: { enabled: true, check: 'ssh', port: 2222 } });
    expect(problem(withBoot('{ enabled: true, check: ssh }'))).toMatch(
      /computers\.pc1\.provisioner\.bootTest\.port: check 'ssh' needs port/,
    );
    expect(problem(withBoot('{ enabled: true, check: ssh, port: 22 }'))).toMatch(
      /bootTest\.port: use an unprivileged port/,
    );
    expect(problem(withBoot('{ enabled: true, pattern: "login:(" }'))).toMatch(
      /bootTest\.pattern: must be a valid regular expression/,
    );
    expect(problem(withBoot('{ enabled: true, check: serial }'))).toMatch(/bootTest\.check: /);
    expect(problem(withBoot('{ enable: true }'))).toMatch(/Unrecognized key.*enable/);
  });

  it('ships a current JSON Schema for editors', () => {
    const shipped = readFileSync(new URL('../examples/inventory.schema.json', import.meta.url), 'utf8');
    expect(shipped, 'run: npx tsx -e "…inventoryJsonSchema()" > examples/inventory.schema.json').toBe(
      inventoryJsonSchema(),
    );
  });

  it('names an unknown host wherever an entry refers to one, with the hosts there are', () => {
    const msg = problem(
      base
        .replace('r1: { host: h1', 'r1: { host: nas')
        .replace('    host: h1\n', '    host: h2\n')
        .replace('type: libvirt, host: h1', 'type: libvirt, host: kvm9'),
    );
    expect(msg.split('\n').slice(1)).toEqual([
      "  inv.yaml:5: repositories.r1.host: unknown host 'nas'; hosts: h1",
      "  inv.yaml:9: computers.pc1.host: unknown host 'h2'; hosts: h1",
      "  inv.yaml:10: computers.pc1.provisioner.host: unknown host 'kvm9'; hosts: h1",
    ]);
  });

  it('refuses control characters in a path (spaces are fine) and asks for a key', () => {
    expect(problem(base.replace('path: /srv/images', 'path: "/srv/im\\tages"'))).toMatch(
      /repositories\.r1\.path: must not contain control characters/,
    );
    expect(problem(base.replace('path: /srv/images', 'path: "/srv/im\\x7fages"'))).toMatch(
      /must not contain control characters/,
    );
    expect(
      parseInventoryText(base.replace('path: /srv/images', 'path: /srv/my images')).repositories.r1?.path,
    ).toBe('/srv/my images');
    expect(problem(base.replace('privateKeyPath: /k', 'port: 22'))).toMatch(
      /inv\.yaml:3: hosts\.h1\.privateKeyPath: give privateKeyPath \(or privateKey\)/,
    );
    const inline = parseInventoryText(base.replace('privateKeyPath: /k', 'privateKey: "-----BEGIN"'));
    expect(inline.hosts.h1?.privateKey).toBe('-----BEGIN');
  });

  it('says which file cannot be read, and where YAML is broken', () => {
    const missing = '/nonexistent/inventory.yaml';
    expect(() => loadInventoryFile(missing)).toThrow(
      expect.objectContaining({
        code: 'INVALID_INVENTORY',
        message: expect.stringMatching(/^cannot read the inventory \/nonexistent\/inventory\.yaml: ENOENT/),
      }),
    );
    const broken = caughtVcl(() => parseInventoryText('hosts: [a\ncomputers: {', 'lab.yaml'));
    expect(broken.code).toBe('INVALID_INVENTORY');
    expect(broken.message).toMatch(/^the inventory is not valid YAML\/JSON:\n {2}lab\.yaml:\d+:\d+: \S/);
    expect(broken.details?.problems).toEqual([
      'lab.yaml:2:1: Flow sequence in block collection must be sufficiently indented and end with a ]',
      'lab.yaml:2:13: Flow map in block collection must be sufficiently indented and end with a }',
    ]);
    expect(caughtVcl(() => parseInventoryText('hosts: [a')).message).toMatch(/\(inventory\):1:\d+: /);
  });

  it('lists every problem of a file in its details, the root ones as (root)', () => {
    const err = caughtVcl(() => parseInventoryText('[]', 'inv.yaml'));
    expect(err.message).toMatch(/^the inventory is invalid:\n {2}inv\.yaml:1: \(root\): /);
    const many = caughtVcl(() =>
      parseInventoryText(
        base.replace('user: root', 'user: 42').replace('domain: pc1', 'domain: "a b"'),
        'inv.yaml',
      ),
    );
    expect(many.details?.problems).toEqual([
      expect.stringMatching(/^inv\.yaml:3: hosts\.h1\.user: /),
      expect.stringMatching(/^inv\.yaml:10: computers\.pc1\.provisioner\.domain: use letters, digits/),
    ]);
    expect(many.message.split('\n')).toHaveLength(3);
  });

  it('validates an inventory object the same way (parseInventory), naming each path', () => {
    expect(parseInventory(parseInventoryText(base)).computers.pc1?.provisioner).toEqual({
      type: 'libvirt',
      host: 'h1',
      domain: 'pc1',
      format: 'qcow2',
      bootTest: { enabled: false, check: 'console', pattern: 'login:' },
    });
    const root = caughtVcl(() => parseInventory(null));
    expect(root.code).toBe('INVALID_INVENTORY');
    expect(root.message).toMatch(/^the inventory is invalid:\n {2}\(root\): /);
    const inv = parseInventoryText(base) as unknown as { hosts: Record<string, { user: unknown }> };
    (inv.hosts.h1 as { user: unknown }).user = 'a b';
    const bad = caughtVcl(() => parseInventory(inv));
    expect(bad.details?.problems).toEqual(['hosts.h1.user: a plain user name']);
  });
});

function caughtVcl(fn: () => unknown): VclError {
  try {
    fn();
  } catch (err) {
    if (err instanceof VclError) return err;
    throw err;
  }
  throw new Error('expected a VclError');
}
