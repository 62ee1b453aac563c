/** Where the API may listen and how its bearer token is read and compared. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { bearerChecker, checkExposure, isLoopback, parseListen, readApiToken } from '../../src/api/auth.js';

const dir = mkdtempSync(join(tmpdir(), 'vcl-api-auth-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const TOKEN = '0123456789abcdef0123456789abcdef';

describe('--listen', () => {
  it.each([
    ['127.0.0.1:7781', { host: '127.0.0.1', port: 7781 }],
    ['[::1]:7781', { host: '::1', port: 7781 }],
    ['0.0.0.0:80', { host: '0.0.0.0', port: 80 }],
    ['7781', { host: '127.0.0.1', port: 7781 }],
    ['localhost:0', { host: 'localhost', port: 0 }],
  ])('%s', (value, expected) => {
    expect(parseListen(value)).toEqual(expected);
  });

  it.each(['', 'host', '127.0.0.1:', '127.0.0.1:70000', 'example.com:80', '1.2.3.4:80:90'])(
    'refuses %j',
    (value) => {
      expect(() => parseListen(value)).toThrow(/--listen/);
    },
  );

  it('loopback is 127/8, ::1 and localhost only', () => {
    expect(['127.0.0.1', '127.1.2.3', '::1', 'localhost'].every(isLoopback)).toBe(true);
    expect(['0.0.0.0', '10.0.0.1', '::', '128.0.0.1'].some(isLoopback)).toBe(false);
  });

  it('beyond loopback needs a token', () => {
    expect(() => checkExposure({ host: '0.0.0.0', port: 1 }, undefined)).toThrow(/VCL_CAPTURE_API_TOKEN/);
    expect(() => checkExposure({ host: '0.0.0.0', port: 1 }, TOKEN)).not.toThrow();
    expect(() => checkExposure({ host: '127.0.0.1', port: 1 }, undefined)).not.toThrow();
  });
});

describe('the token', () => {
  it('comes from the file (first line) before the environment', () => {
    const file = join(dir, 'token');
    writeFileSync(file, `${TOKEN}\nignored\n`);
    expect(readApiToken({ file, env: { VCL_CAPTURE_API_TOKEN: 'other-token-that-is-long' } })).toBe(TOKEN);
    expect(readApiToken({ env: { VCL_CAPTURE_API_TOKEN: TOKEN } })).toBe(TOKEN);
    expect(readApiToken({ env: {} })).toBeUndefined();
  });

  it('refuses a missing or empty file and a short token, without printing it', () => {
    expect(() => readApiToken({ file: join(dir, 'absent') })).toThrow(/--api-token-file: cannot read/);
    const empty = join(dir, 'empty');
    writeFileSync(empty, '\n');
    expect(() => readApiToken({ file: empty })).toThrow(/is empty/);
    expect(() => readApiToken({ env: { VCL_CAPTURE_API_TOKEN: 'short-secret' } })).toThrow(
      /at least 16 characters/,
    );
    try {
      readApiToken({ env: { VCL_CAPTURE_API_TOKEN: 'short-secret' } });
    } catch (err) {
      expect((err as Error).message).not.toContain('short-secret');
    }
  });

  it('is compared as a bearer token, whole', () => {
    const ok = bearerChecker(TOKEN);
    expect(ok(`Bearer ${TOKEN}`)).toBe(true);
    for (const header of [
      undefined,
      '',
      TOKEN,
      `Basic ${TOKEN}`,
      `Bearer ${TOKEN}x`,
      `Bearer ${TOKEN.slice(1)}`,
      `Bearer  ${TOKEN}`,
      'Bearer ',
    ])
      expect(ok(header), String(header)).toBe(false);
  });
});
