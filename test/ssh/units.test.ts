/**
 * The pure parts of the transport: quoting checked against a real POSIX shell (dash, Debian's /bin/sh),
 * fingerprints against ssh-keygen, known_hosts matching, and the channel queue.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isVclError, type VclError } from '../../src/errors.js';
import {
  decideHostKey,
  fingerprintSha256,
  hashKnownHostName,
  knownHostsFieldMatches,
  parseKnownHosts,
} from '../../src/ssh/hostkeys.js';
import { shellQuote, toCommandLine } from '../../src/ssh/index.js';
import { Slots } from '../../src/ssh/slots.js';
import { ed25519KeyPair } from '../helpers/keys.js';

describe('shellQuote', () => {
  const words = [
    '',
    'plain',
    "it's",
    "''",
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${x} is exactly what must survive the shell
    '$HOME $(id) `id` ${x}',
    'a b\tc\nd',
    '*?[a]~',
    '\\\\n',
    '"',
    '!event',
    '-rf',
    'A=b',
    '#comment',
    'ünïcødé ✓',
    '&;|<>(){}',
  ];

  it('round-trips every word through /bin/sh unchanged', () => {
    const r = spawnSync('/bin/sh', ['-c', `printf '%s\\0' ${words.map(shellQuote).join(' ')}`], {
      encoding: 'utf8',
    });
    expect(r.status).toBe(0);
    expect(r.stdout.split('\0').slice(0, -1)).toEqual(words);
  });

  it('leaves safe words bare and quotes assignments', () => {
    expect(toCommandLine(['qemu-img', 'convert', '-O', 'qcow2', '/a/b.img', 'x@y:z,1%'])).toBe(
      'qemu-img convert -O qcow2 /a/b.img x@y:z,1%',
    );
    expect(shellQuote('A=b')).toBe("'A=b'");
    expect(shellQuote('')).toBe("''");
  });

  it('refuses NUL bytes, non-strings and empty argument vectors with a typed error naming the word', () => {
    const nul = caught(() => shellQuote('a\0b'));
    expect(isVclError(nul, 'SHELL_QUOTE_NUL')).toBe(true);
    expect((nul as Error).message).toMatch(/contains a NUL byte/);
    // The operator sees which word it was, with the NUL spelled out (a raw NUL would cut the log line).
    expect((nul as VclError).details).toEqual({ argument: 'a\\0b' });
    expect(String((nul as VclError).details?.argument)).toHaveLength(4);
    const long = caught(() => shellQuote(`${'x'.repeat(300)}\0`));
    expect(String((long as VclError).details?.argument)).toHaveLength(200);

    const notString = caught(() => shellQuote(42 as unknown as string));
    expect(isVclError(notString, 'SHELL_QUOTE_INVALID')).toBe(true);
    expect((notString as Error).message).toBe('shellQuote expects a string, got number');

    const empty = caught(() => toCommandLine([]));
    expect(isVclError(empty, 'SHELL_QUOTE_INVALID')).toBe(true);
    expect((empty as Error).message).toMatch(/empty argument vector/);
  });
});

/** The error `fn` throws; fails the test when it throws nothing. */
function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

describe('host keys', () => {
  const pub = ed25519KeyPair().public.trim().split(/\s+/).slice(0, 2).join(' ');
  const blob = Buffer.from(pub.split(' ')[1] ?? '', 'base64');
  const other = ed25519KeyPair().public.trim().split(/\s+/).slice(0, 2).join(' ');

  it('prints fingerprints exactly as ssh-keygen -l does', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vcl-fp-'));
    try {
      writeFileSync(join(dir, 'k.pub'), `${pub}\n`);
      const r = spawnSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', join(dir, 'k.pub')], {
        encoding: 'utf8',
      });
      expect(r.status).toBe(0);
      expect(r.stdout.split(' ')[1]).toBe(fingerprintSha256(blob));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('matches plain, port-qualified, wildcard, negated and hashed names', () => {
    expect(knownHostsFieldMatches('a.lab,b.lab', 'b.lab')).toBe(true);
    expect(knownHostsFieldMatches('[10.0.0.1]:2222', '[10.0.0.1]:2222')).toBe(true);
    expect(knownHostsFieldMatches('10.0.0.1', '[10.0.0.1]:2222')).toBe(false);
    expect(knownHostsFieldMatches('*.lab,!bad.lab', 'good.lab')).toBe(true);
    expect(knownHostsFieldMatches('*.lab,!bad.lab', 'bad.lab')).toBe(false);
    expect(knownHostsFieldMatches('node?.lab', 'node7.lab')).toBe(true);
    const hashed = hashKnownHostName('Node1.Lab', Buffer.alloc(20, 3));
    expect(knownHostsFieldMatches(hashed, 'node1.lab')).toBe(true);
    expect(knownHostsFieldMatches(hashed, 'node2.lab')).toBe(false);
  });

  it('decides trusted, unknown, changed, pinned mismatch and revoked', () => {
    const entries = parseKnownHosts(`node1 ${pub}\nnode2 ${other}\n# comment\nbroken line\n`);
    expect(entries).toHaveLength(2);
    expect(decideHostKey(blob, 'node1', [], entries)).toMatchObject({ kind: 'trusted', via: 'known_hosts' });
    expect(decideHostKey(blob, 'node2', [], entries)).toMatchObject({
      kind: 'mismatch',
      reason: 'changed',
      line: 2,
    });
    expect(decideHostKey(blob, 'node3', [], entries)).toMatchObject({ kind: 'unknown' });
    const fp = fingerprintSha256(blob);
    expect(decideHostKey(blob, 'node3', [fp.slice('SHA256:'.length)], [])).toMatchObject({ kind: 'trusted' });
    expect(decideHostKey(blob, 'node3', ['SHA256:AAAA'], [])).toMatchObject({
      kind: 'mismatch',
      reason: 'pinned',
    });
    const revoked = parseKnownHosts(`@revoked * ${pub}\nnode1 ${pub}\n`);
    expect(decideHostKey(blob, 'node1', [fp], revoked)).toMatchObject({
      kind: 'mismatch',
      reason: 'revoked',
    });
  });
});

describe('Slots', () => {
  it('grants in FIFO order and lets a queued waiter abort', async () => {
    const slots = new Slots(1);
    const order: string[] = [];
    const first = await slots.acquire(undefined, () => new Error('x'));
    const ac = new AbortController();
    const a = slots
      .acquire(undefined, () => new Error('a'))
      .then((r) => {
        order.push('a');
        return r;
      });
    const b = slots.acquire(ac.signal, () => new Error('b aborted'));
    const c = slots
      .acquire(undefined, () => new Error('c'))
      .then((r) => {
        order.push('c');
        return r;
      });
    expect(slots.queued).toBe(3);
    ac.abort();
    await expect(b).rejects.toThrow('b aborted');
    first();
    (await a)();
    (await c)();
    expect(order).toEqual(['a', 'c']);
    expect(slots.inUse).toBe(0);
  });
});
