/**
 * Redaction of everything the inspector shows: a value is copied field by field, and
 * - a field whose name says secret (password, passphrase, token, secret, key, credential...) is replaced;
 * - a string that holds a PEM block (`-----BEGIN ... PRIVATE KEY-----`) or any known secret is replaced;
 * - functions, symbols and class instances other than plain objects, arrays and dates are dropped;
 * - depth, array length and string length are bounded.
 *
 * Known secrets come from the inventory (inline keys, the files its key paths name, the passphrases its
 * `passphraseEnv` / `passphraseFile` point at): they are matched as substrings, so a secret that reaches a
 * context or an error message by accident is still cut out.
 */
import { readFileSync, statSync } from 'node:fs';
import { type HostSecretFields, hostSecretTexts } from '../inventory/hosts.js';

export const REDACTED = '[redacted]';

/** Field names whose value is never shown. */
const SECRET_NAME =
  /pass(word|phrase|wd)?$|^pass|secret|token|credential|cookie|authorization|private|^key$|[-_ ]?key$|^keys$|apikey/i;

/** `-----BEGIN OPENSSH PRIVATE KEY-----` and friends. */
const PEM = /-----BEGIN [A-Z0-9 ]*(PRIVATE KEY|ENCRYPTED|CERTIFICATE)[A-Z0-9 ]*-----/;

export interface RedactOptions {
  /** Strings cut out wherever they appear (shorter than 6 characters: ignored, too likely to match). */
  secrets?: readonly string[];
  maxDepth?: number;
  maxArray?: number;
  maxString?: number;
}

export function isSecretName(name: string): boolean {
  return SECRET_NAME.test(name);
}

export function redactString(text: string, secrets: readonly string[] = [], maxString = 2000): string {
  if (PEM.test(text)) return REDACTED;
  let out = text;
  for (const s of secrets) {
    if (s.length >= 6 && out.includes(s)) out = out.split(s).join(REDACTED);
  }
  return out.length > maxString ? `${out.slice(0, maxString)}… (${out.length} characters)` : out;
}

/** A redacted, JSON-safe copy of `value`. */
export function redact(value: unknown, options: RedactOptions = {}): unknown {
  const secrets = (options.secrets ?? []).filter((s) => s.length >= 6);
  const maxDepth = options.maxDepth ?? 8;
  const maxArray = options.maxArray ?? 100;
  const maxString = options.maxString ?? 2000;
  const seen = new Set<object>();
  const walk = (v: unknown, depth: number): unknown => {
    if (v === null || typeof v === 'boolean') return v;
    if (typeof v === 'number') return Number.isFinite(v) ? v : String(v);
    if (typeof v === 'bigint') return v.toString();
    if (typeof v === 'string') return redactString(v, secrets, maxString);
    if (typeof v !== 'object') return undefined; // functions, symbols, undefined
    if (v instanceof Date) return v.toISOString();
    if (depth >= maxDepth) return '[…]';
    if (seen.has(v)) return '[circular]';
    seen.add(v);
    try {
      if (Array.isArray(v)) {
        const items = v.slice(0, maxArray).map((x) => walk(x, depth + 1) ?? null);
        if (v.length > maxArray) items.push(`… ${v.length - maxArray} more`);
        return items;
      }
      const proto = Object.getPrototypeOf(v);
      if (v instanceof Error) {
        return { name: v.name, message: redactString(v.message, secrets, maxString) };
      }
      if (proto !== Object.prototype && proto !== null) return `[${proto?.constructor?.name ?? 'object'}]`;
      const out: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) {
        if (isSecretName(k) && x !== null && x !== undefined && typeof x !== 'boolean') {
          out[k] = REDACTED;
          continue;
        }
        const r = walk(x, depth + 1);
        if (r !== undefined) out[k] = r;
      }
      return out;
    } finally {
      seen.delete(v);
    }
  };
  return walk(value, 0);
}

function readSmall(path: string): string | undefined {
  try {
    if (statSync(path).size > 256 * 1024) return undefined;
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * The secrets an inventory leads to: inline private keys, the contents of key and passphrase files, and
 * the values of passphrase environment variables. Only used to cut them out; the inventory itself is
 * never sent anywhere.
 */
export function secretsOfInventory(inventory: unknown, env: NodeJS.ProcessEnv = process.env): string[] {
  const out = new Set<string>();
  const add = (s: string | undefined) => {
    if (!s) return;
    const t = s.trim();
    if (t.length >= 6) out.add(t);
    // A key's body lines are secrets on their own (a log or an error may carry one line).
    for (const line of t.split(/\r?\n/)) if (line.length >= 40 && !line.startsWith('-----')) out.add(line);
  };
  const hosts = (inventory as { hosts?: Record<string, HostSecretFields> } | null)?.hosts ?? {};
  for (const [name, host] of Object.entries(hosts)) for (const s of hostSecretTexts(name, host, env)) add(s);
  // Webhook signing keys, and the webhook URLs themselves (chat webhooks carry their token in the path).
  const notifications = (inventory as { notifications?: { webhooks?: unknown } } | null)?.notifications;
  const webhooks = Array.isArray(notifications?.webhooks) ? (notifications.webhooks as unknown[]) : [];
  for (const w of webhooks) {
    const hook = w as { url?: unknown; secret?: { env?: unknown; file?: unknown } };
    if (typeof hook.url === 'string') add(hook.url);
    if (typeof hook.secret?.env === 'string') add(env[hook.secret.env]);
    if (typeof hook.secret?.file === 'string') add(readSmall(hook.secret.file));
  }
  return [...out];
}
