/**
 * Where the API listens and who may call it. On loopback only local processes reach it, so no token is
 * needed (one may still be set); any other address must have a bearer token, which comes from the
 * environment or a file, never from the inventory (a file that is often shared, versioned, and printed).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';

export const API_TOKEN_ENV = 'VCL_CAPTURE_API_TOKEN';
/** Shorter tokens are refused: a bearer token is the only thing between the network and the daemon. */
const MIN_TOKEN_LENGTH = 16;

export interface ListenAddress {
  host: string;
  port: number;
}

/** `127.0.0.1:7781`, `[::1]:7781`, `0.0.0.0:7781`, or a bare port (loopback). */
export function parseListen(value: string): ListenAddress {
  const m = /^(?:(\[[0-9A-Fa-f:.]+\]|[^:[\]]+):)?(\d{1,5})$/.exec(value.trim());
  const port = Number(m?.[2]);
  if (!m || !Number.isInteger(port) || port > 65535)
    throw new RangeError(`--listen: expected host:port (e.g. 127.0.0.1:7781), got '${value}'`);
  const host = (m[1] ?? '127.0.0.1').replace(/^\[|\]$/g, '');
  if (host !== 'localhost' && isIP(host) === 0)
    throw new RangeError(`--listen: '${host}' is not an IP address (give the address to bind, e.g. 0.0.0.0)`);
  return { host, port };
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The token from `--api-token-file` (first line) or the environment, or undefined. */
export function readApiToken(o: { file?: string; env?: NodeJS.ProcessEnv }): string | undefined {
  let token: string | undefined;
  if (o.file !== undefined) {
    try {
      token = readFileSync(o.file, 'utf8').split(/\r?\n/)[0]?.trim();
    } catch (err) {
      throw new RangeError(`--api-token-file: cannot read ${o.file}: ${(err as Error).message}`);
    }
    if (!token) throw new RangeError(`--api-token-file: ${o.file} is empty`);
  } else {
    token = (o.env ?? process.env)[API_TOKEN_ENV]?.trim() || undefined;
  }
  if (token !== undefined && token.length < MIN_TOKEN_LENGTH)
    throw new RangeError(
      `the API token must be at least ${MIN_TOKEN_LENGTH} characters (e.g. \`openssl rand -hex 32\`)`,
    );
  return token;
}

/** Refuses to serve a non-loopback address without a token. */
export function checkExposure(listen: ListenAddress, token: string | undefined): void {
  if (!isLoopback(listen.host) && token === undefined)
    throw new RangeError(
      `the API listens on ${listen.host}, beyond loopback: set a bearer token in ${API_TOKEN_ENV} or give --api-token-file`,
    );
}

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/**
 * A checker of `Authorization: Bearer <token>` headers. Both sides are hashed first, so the comparison is
 * constant-time over equal-length digests whatever the length of what was sent.
 */
export function bearerChecker(token: string): (header: string | undefined) => boolean {
  const expected = digest(token);
  return (header) => {
    const m = /^Bearer ([^\s]+)$/.exec(header ?? '');
    const given = digest(m?.[1] ?? '');
    return timingSafeEqual(given, expected) && m !== null;
  };
}
