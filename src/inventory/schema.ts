/**
 * The inventory: every host the runner may reach, the computers it may capture and the image
 * repositories, validated with zod before anything runs. A validation error names the entry and the
 * field that is wrong and says what is allowed.
 */
import { z } from 'zod';
import { DEFAULT_TIMEOUTS, OPERATING_SYSTEMS, type Timeouts } from '../../machines/types.js';
import { VclError } from '../errors.js';
import { provisionerSettingsSchemas } from '../provisioners/index.js';
import { absolutePath, name } from './fields.js';

/** Per-step timeouts in ms, each optional (the inventory's and a capture request's). */
export const timeoutsSchema = z
  .object(
    Object.fromEntries(
      Object.keys(DEFAULT_TIMEOUTS).map((k) => [k, z.number().int().positive().optional()]),
    ) as Record<keyof Timeouts, z.ZodOptional<z.ZodNumber>>,
  )
  .strict();

const fingerprint = z
  .string()
  .regex(/^SHA256:[A-Za-z0-9+/]{43}=?$/, 'must look like SHA256:<43 base64 characters> (ssh-keygen -lf)');

export const hostSchema = z
  .object({
    address: z.string().min(1),
    port: z.number().int().min(1).max(65535).default(22),
    user: z
      .string()
      .min(1)
      .regex(/^[A-Za-z0-9_.-]+$/, 'a plain user name'),
    /** Path of the private key file (preferred) or the key itself. */
    privateKeyPath: z.string().optional(),
    privateKey: z.string().optional(),
    /** The key's passphrase comes from the environment or a file, never from the inventory itself. */
    passphraseEnv: z
      .string()
      .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name')
      .optional(),
    passphraseFile: z.string().optional(),
    hostKey: z
      .object({
        fingerprints: z.array(fingerprint).optional(),
        knownHostsFile: z.string().optional(),
        acceptNew: z.boolean().optional(),
      })
      .strict()
      .default({}),
    /** Captures that may run against this host at once (Nova: 5 snapshots per compute host). */
    maxCaptures: z.number().int().positive().default(5),
    /** Copies that may run from or to this host at once. */
    maxCopies: z.number().int().positive().default(2),
    maxChannels: z.number().int().positive().max(10).optional(),
    timeouts: timeoutsSchema.optional(),
  })
  .strict()
  .refine((h) => h.privateKeyPath !== undefined || h.privateKey !== undefined, {
    message: 'give privateKeyPath (or privateKey)',
    path: ['privateKeyPath'],
  });

export const computerSchema = z
  .object({
    os: z.enum(OPERATING_SYSTEMS),
    /** The host entry used to reach the computer's own OS over SSH. */
    host: name,
    provisioner: z.discriminatedUnion('type', provisionerSettingsSchemas()),
    repository: name,
    reservationUsers: z.array(z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'a POSIX user name')).default([]),
    sysprep: z.boolean().optional(),
    timeouts: timeoutsSchema.optional(),
  })
  .strict();

export const repositorySchema = z
  .object({
    host: name,
    path: absolutePath,
  })
  .strict();

const envName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name');

/** Event types a receiver may ask for (the store's NOTIFICATION_EVENT_TYPES, repeated for zod). */
const notificationEvents = z
  .array(z.enum(['capture.completed', 'capture.failed', 'capture.cancelled', 'computer.maintenance']))
  .min(1)
  .optional();

/** A receiver's stable name: its deliveries are tracked under it (renaming makes a new receiver). */
const receiverName = z
  .string()
  .regex(
    /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/,
    'use letters, digits, ".", "_" and "-", starting with a letter or digit',
  );

const webhookSchema = z
  .object({
    name: receiverName,
    url: z
      .string()
      .url('must be an absolute http:// or https:// URL')
      .refine((u) => /^https?:\/\//i.test(u), 'must be an http:// or https:// URL'),
    /**
     * The HMAC-SHA256 key signing each body: from the environment or a file (first line), never from
     * the inventory itself.
     */
    secret: z.union([z.object({ env: envName }).strict(), z.object({ file: z.string().min(1) }).strict()]),
    events: notificationEvents,
    /** Deadline of one attempt (connect, send, answer). */
    timeoutMs: z.number().int().positive().max(300_000).default(10_000),
  })
  .strict();

const commandHookSchema = z
  .object({
    name: receiverName,
    /** The program and its arguments, run without a shell; the event arrives as JSON on stdin. */
    argv: z.array(z.string().min(1)).min(1),
    events: notificationEvents,
    /** Deadline of one run; the command is killed after it. */
    timeoutMs: z.number().int().positive().max(3_600_000).default(30_000),
  })
  .strict();

export const notificationsSchema = z
  .object({
    webhooks: z.array(webhookSchema).default([]),
    commands: z.array(commandHookSchema).default([]),
    /** Retries: exponential back-off with jitter, from `initialDelayMs` up to `maxDelayMs` between attempts. */
    retry: z
      .object({
        maxAttempts: z.number().int().positive().max(1000).default(12),
        initialDelayMs: z.number().int().positive().default(5_000),
        maxDelayMs: z.number().int().positive().default(3_600_000),
        /** An event still undelivered this long after it happened is given up (dead). */
        maxAgeMs: z
          .number()
          .int()
          .positive()
          .default(2 * 24 * 3_600_000),
      })
      .strict()
      .default({
        maxAttempts: 12,
        initialDelayMs: 5_000,
        maxDelayMs: 3_600_000,
        maxAgeMs: 2 * 24 * 3_600_000,
      }),
  })
  .strict();

export const inventorySchema = z
  .object({
    hosts: z.record(name, hostSchema),
    computers: z.record(name, computerSchema),
    repositories: z.record(name, repositorySchema),
    defaults: z
      .object({
        timeouts: timeoutsSchema.optional(),
        maxConcurrentCaptures: z.number().int().positive().default(100),
      })
      .strict()
      .default({ maxConcurrentCaptures: 100 }),
    /** Webhooks and local commands told when a capture ends or a computer goes to maintenance. */
    notifications: notificationsSchema.optional(),
  })
  .strict()
  .superRefine((inv, ctx) => {
    const receivers = new Set<string>();
    for (const [kind, list] of [
      ['webhooks', inv.notifications?.webhooks ?? []],
      ['commands', inv.notifications?.commands ?? []],
    ] as const) {
      list.forEach((r, i) => {
        if (receivers.has(r.name))
          ctx.addIssue({
            code: 'custom',
            path: ['notifications', kind, i, 'name'],
            message: `the receiver name '${r.name}' is used twice; each webhook and command needs its own name`,
          });
        receivers.add(r.name);
      });
    }
    const host = (h: string, path: (string | number)[]) => {
      if (!(h in inv.hosts))
        ctx.addIssue({
          code: 'custom',
          path,
          message: `unknown host '${h}'; hosts: ${Object.keys(inv.hosts).join(', ')}`,
        });
    };
    for (const [n, r] of Object.entries(inv.repositories)) host(r.host, ['repositories', n, 'host']);
    for (const [n, c] of Object.entries(inv.computers)) {
      host(c.host, ['computers', n, 'host']);
      host(c.provisioner.host, ['computers', n, 'provisioner', 'host']);
      if (!(c.repository in inv.repositories))
        ctx.addIssue({
          code: 'custom',
          path: ['computers', n, 'repository'],
          message: `unknown repository '${c.repository}'; repositories: ${Object.keys(inv.repositories).join(', ')}`,
        });
    }
  });

export type Inventory = z.output<typeof inventorySchema>;
export type InventoryInput = z.input<typeof inventorySchema>;
export type HostEntry = Inventory['hosts'][string];
export type ComputerEntry = Inventory['computers'][string];
export type RepositoryEntry = Inventory['repositories'][string];
export type NotificationsConfig = NonNullable<Inventory['notifications']>;

/** Inventories this process validated (parseInventory, the file loader): a runner takes them as they are. */
const validated = new WeakSet<object>();

/** Marks the schema's output as validated (only the schema's own output may be given). */
export function validatedInventory(data: Inventory): Inventory {
  validated.add(data);
  return data;
}

/**
 * The inventory a runner works with: one validated in this process (by `parseInventory` or the file
 * loader) is taken without validating it again, as a copy like the schema's output is; anything else is
 * validated here.
 */
export function runnerInventory(input: unknown): Inventory {
  if (typeof input === 'object' && input !== null && validated.has(input))
    return validatedInventory(structuredClone(input as Inventory));
  return parseInventory(input);
}

/** Validates an inventory; the error lists every problem as `path: message`. */
export function parseInventory(input: unknown): Inventory {
  const r = inventorySchema.safeParse(input);
  if (r.success) return validatedInventory(r.data);
  const problems = r.error.issues.map((i) => `${i.path.map(String).join('.') || '(root)'}: ${i.message}`);
  throw new VclError('INVALID_INVENTORY', `the inventory is invalid:\n  ${problems.join('\n  ')}`, {
    details: { problems },
  });
}
