/**
 * The tagged view of the remote side one runner execution gets, against a real SQLite store and a fake
 * remote that records what it is asked and answers the leftover sweep like the real script does: which
 * commands carry the tag, when earlier executions' tags are swept and forgotten, and what a failed
 * sweep, a retry, a copy and an abort do. (The sweep against a real sshd is in test/ssh/leftovers.test.ts.)
 */
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Remote } from '../../src/drivers/contract.js';
import { type Logger, silentLogger } from '../../src/log.js';
import { taggedRemote } from '../../src/runner/leftovers.js';
import {
  type CopyEndpoint,
  type CopyOptions,
  type CopyResult,
  type ExecOptions,
  type ExecResult,
  isRemoteTag,
  LEFTOVER_SWEEP_SCRIPT,
  leftoverSweep,
  type SshHost,
} from '../../src/ssh/index.js';
import type { RemoteTagRecord, SqliteCaptureStore } from '../../src/store/index.js';
import { expectVclError, openStore, REPO, seed, tempFolder } from '../store/helpers.js';

const CAPTURE = 'cap-1';
const OLD_A = '0123456789abcdef';
const OLD_B = 'fedcba9876543210';
const OLD_OTHER = 'aaaaaaaaaaaaaaaa';

const host = (name: string): SshHost => ({ name, host: `${name}.lab`, username: 'root', privateKey: 'k' });
const esx = host('esx-1');
const repo = host('repo-1');

type Call =
  | { kind: 'exec'; host: string; argv: readonly string[]; options: ExecOptions | undefined }
  | { kind: 'copy'; from: CopyEndpoint; to: CopyEndpoint; options: CopyOptions | undefined };

const result = (r: Partial<ExecResult>): ExecResult => ({
  code: 0,
  signal: null,
  stdout: '',
  stderr: '',
  durationMs: 1,
  disconnected: false,
  ...r,
});

/** What the real sweep script prints and exits with (see LEFTOVER_SWEEP_SCRIPT). */
const sweep = {
  clean: (killed: number) => result({ stdout: `killed ${killed}\n` }),
  survivors: (killed: number, left: number) =>
    result({ code: 1, stdout: `killed ${killed}\n`, stderr: `left ${left}\n` }),
  unsupported: () => result({ code: 3 }),
  noShell: () => result({ code: 127, stderr: 'sh: 1: tr: not found\n' }),
  killed: () => result({ code: null, signal: 'SIGKILL' }),
};

const COPIED: CopyResult = {
  bytes: 10,
  wireBytes: 10,
  compressed: false,
  sha256: 'b'.repeat(64),
  durationMs: 1,
  bytesPerSecond: 10,
  resumes: 0,
  resentBytes: 0,
};

const isSweep = (argv: readonly string[]) => argv[0] === 'sh' && argv[2] === LEFTOVER_SWEEP_SCRIPT;

/**
 * A Remote that records every call; sweeps answer from `sweeps` in turn (then clean), other commands
 * with `ok <argv>`. `gate`, when set, holds sweeps until it resolves.
 */
class FakeRemote implements Remote {
  calls: Call[] = [];
  sweeps: ExecResult[] = [];
  gate: Promise<void> | undefined;
  /** Tags the store held when each non-sweep command started. */
  tagsAtCommand: RemoteTagRecord[][] = [];
  constructor(private readonly store?: SqliteCaptureStore) {}

  async exec(h: SshHost, argv: readonly string[], options?: ExecOptions): Promise<ExecResult> {
    this.calls.push({ kind: 'exec', host: h.name, argv, options });
    if (isSweep(argv)) {
      if (this.gate) await this.gate;
      return this.sweeps.shift() ?? sweep.clean(0);
    }
    if (this.store) this.tagsAtCommand.push(await this.store.remoteTags(CAPTURE));
    return result({ stdout: `ok ${argv.join(' ')}` });
  }

  async copy(from: CopyEndpoint, to: CopyEndpoint, options?: CopyOptions): Promise<CopyResult> {
    this.calls.push({ kind: 'copy', from, to, options });
    return COPIED;
  }

  get sweepCalls() {
    return this.calls.filter((c) => c.kind === 'exec' && isSweep(c.argv));
  }
}

class AnsweringRemote extends FakeRemote {
  asked: string[] = [];
  async answers(h: SshHost, _options: { timeoutMs: number; signal?: AbortSignal }): Promise<boolean> {
    // `this` must be the remote itself: the real SshPool's answers uses its own state.
    this.asked.push(h.name);
    return true;
  }
}

/** A pino logger that keeps its lines in memory. */
function memoryLogger(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

let folder: ReturnType<typeof tempFolder>;
let store: SqliteCaptureStore;

beforeEach(async () => {
  folder = tempFolder('vcl-leftovers-');
  store = openStore(folder.file('store.sqlite'));
  await seed(store);
  await store.createCapture({
    id: CAPTURE,
    computer: 'pc-01',
    imageId: 12345,
    provisioner: 'vmware',
    os: 'windows',
    repository: REPO,
  });
});

afterEach(async () => {
  await store.close();
  folder.cleanup();
});

/** Records earlier executions' tags and returns them as the runner reads them. */
async function earlierTags(...records: [string, string][]): Promise<RemoteTagRecord[]> {
  for (const [h, t] of records) await store.recordRemoteTag(CAPTURE, h, t);
  return store.remoteTags(CAPTURE);
}

const tagsOf = async () => (await store.remoteTags(CAPTURE)).map((r) => `${r.host}:${r.tag}`).sort();

describe('taggedRemote', () => {
  it('tags every command and records the tag on the host before the first one', async () => {
    const fake = new FakeRemote(store);
    const remote = taggedRemote(fake, store, CAPTURE, [], silentLogger());
    expect(isRemoteTag(remote.tag)).toBe(true);
    expect(taggedRemote(fake, store, CAPTURE, [], silentLogger()).tag).not.toBe(remote.tag);

    const r = await remote.exec(esx, ['vim-cmd', 'vmsvc/getallvms'], { step: 'find_vm', timeoutMs: 5000 });
    expect(r.stdout).toBe('ok vim-cmd vmsvc/getallvms');
    await remote.exec(esx, ['true']);
    expect(fake.calls).toEqual([
      {
        kind: 'exec',
        host: 'esx-1',
        argv: ['vim-cmd', 'vmsvc/getallvms'],
        options: { step: 'find_vm', timeoutMs: 5000, tag: remote.tag },
      },
      { kind: 'exec', host: 'esx-1', argv: ['true'], options: { tag: remote.tag } },
    ]);
    expect(fake.tagsAtCommand[0]).toEqual([expect.objectContaining({ host: 'esx-1', tag: remote.tag })]);
    expect(await tagsOf()).toEqual([`esx-1:${remote.tag}`]);
  });

  it('sweeps a host’s earlier tags before the first command there, then forgets them', async () => {
    const earlier = await earlierTags(['esx-1', OLD_A], ['esx-1', OLD_B], ['repo-1', OLD_OTHER]);
    const fake = new FakeRemote(store);
    fake.sweeps = [sweep.clean(2)];
    const { log, lines } = memoryLogger();
    const remote = taggedRemote(fake, store, CAPTURE, earlier, log);

    await remote.exec(esx, ['ls'], { step: 'export' });
    expect(fake.calls.map((c) => (c.kind === 'exec' ? c.argv : []))).toEqual([
      leftoverSweep([OLD_A, OLD_B]),
      ['ls'],
    ]);
    expect(fake.calls[0]).toMatchObject({ host: 'esx-1' });
    expect(fake.calls[0]?.options).toStrictEqual({ check: false, timeoutMs: 60_000, step: 'export' });
    // The command starts with the earlier tags gone and its own recorded; another host's are kept.
    const atCommand = fake.tagsAtCommand[0]?.map((r) => `${r.host}:${r.tag}`).sort();
    expect(atCommand).toEqual([`esx-1:${remote.tag}`, `repo-1:${OLD_OTHER}`]);
    expect(lines).toContainEqual(
      expect.objectContaining({
        level: 30,
        host: 'esx-1',
        tags: [OLD_A, OLD_B],
        killed: 2,
        msg: 'stopped commands an earlier run left running',
      }),
    );
  });

  it('names no step in the sweep when the command names none, and says when nothing was left', async () => {
    const earlier = await earlierTags(['esx-1', OLD_A]);
    const fake = new FakeRemote(store);
    const { log, lines } = memoryLogger();
    await taggedRemote(fake, store, CAPTURE, earlier, log).exec(esx, ['ls']);
    expect(fake.calls[0]?.options).toStrictEqual({ check: false, timeoutMs: 60_000 });
    expect(lines).toContainEqual(
      expect.objectContaining({ level: 30, killed: 0, msg: 'no earlier command left running' }),
    );
  });

  it('does not sweep a host for tags recorded on other hosts', async () => {
    const earlier = await earlierTags(['repo-1', OLD_OTHER]);
    const fake = new FakeRemote(store);
    const remote = taggedRemote(fake, store, CAPTURE, earlier, silentLogger());
    await remote.exec(esx, ['ls']);
    expect(fake.sweepCalls).toEqual([]);
    expect(await tagsOf()).toEqual([`esx-1:${remote.tag}`, `repo-1:${OLD_OTHER}`].sort());
  });

  it('refuses to start beside survivors, naming the host and their count, and keeps the tags', async () => {
    const earlier = await earlierTags(['esx-1', OLD_A], ['esx-1', OLD_B]);
    const fake = new FakeRemote(store);
    fake.sweeps = [sweep.survivors(3, 2)];
    const remote = taggedRemote(fake, store, CAPTURE, earlier, silentLogger());
    const err = await expectVclError(
      remote.exec(esx, ['qemu-img', 'convert'], { step: 'convert' }),
      'REMOTE_LEFTOVER',
      /^esx-1: 2 process\(es\) an earlier run of this capture left there did not end after SIGKILL/,
    );
    expect(err.step).toBe('convert');
    expect(err.details).toMatchObject({ host: 'esx-1', tags: [OLD_A, OLD_B] });
    expect(fake.calls).toHaveLength(1);
    // Nothing is forgotten: the next execution must sweep them again.
    expect(await tagsOf()).toEqual([`esx-1:${OLD_A}`, `esx-1:${OLD_B}`].sort());
  });

  it.each([
    ['an exit code', sweep.noShell(), /\(exit 127: sh: 1: tr: not found\)/],
    ['a signal', sweep.killed(), /\(exit SIGKILL: \)/],
  ])('refuses to start when the sweep itself fails with %s', async (_, answer, message) => {
    const earlier = await earlierTags(['esx-1', OLD_A]);
    const fake = new FakeRemote(store);
    fake.sweeps = [answer];
    const remote = taggedRemote(fake, store, CAPTURE, earlier, silentLogger());
    const err = await expectVclError(remote.exec(esx, ['ls']), 'REMOTE_LEFTOVER', message);
    expect(err.message).toMatch(/^esx-1: could not look for processes an earlier run of this capture left/);
    expect(err.step).toBeUndefined();
    expect(err.details).toMatchObject({ host: 'esx-1', tags: [OLD_A], stderr: answer.stderr });
    expect(fake.calls).toHaveLength(1);
    expect(await tagsOf()).toEqual([`esx-1:${OLD_A}`]);
  });

  it('keeps the end of a long sweep error: its last 300 characters in the message, 2000 in details', async () => {
    const earlier = await earlierTags(['esx-1', OLD_A]);
    const fake = new FakeRemote(store);
    const stderr = `${'x'.repeat(2500)}END\n`;
    // Exit 1 without a `left <n>` line: the script did not run through.
    fake.sweeps = [result({ code: 1, stderr })];
    const remote = taggedRemote(fake, store, CAPTURE, earlier, silentLogger());
    const err = await expectVclError(remote.exec(esx, ['ls']), 'REMOTE_LEFTOVER');
    expect(err.message).toContain(`(exit 1: ${'x'.repeat(297)}END)`);
    expect(err.message).not.toContain('x'.repeat(298));
    expect(err.details?.stderr).toBe(stderr.slice(-2000));
  });

  it('goes on, with a warning, on a host where nothing can be looked for', async () => {
    const earlier = await earlierTags(['esx-1', OLD_A]);
    const fake = new FakeRemote(store);
    fake.sweeps = [sweep.unsupported()];
    const { log, lines } = memoryLogger();
    const remote = taggedRemote(fake, store, CAPTURE, earlier, log);
    await remote.exec(esx, ['ls']);
    expect(fake.calls.map((c) => c.kind === 'exec' && c.argv[0])).toEqual(['sh', 'ls']);
    expect(await tagsOf()).toEqual([`esx-1:${remote.tag}`]);
    expect(lines).toContainEqual(expect.objectContaining({ level: 40, host: 'esx-1', tags: [OLD_A] }));
  });

  it('prepares a host once, also for commands that start together', async () => {
    const earlier = await earlierTags(['esx-1', OLD_A]);
    const fake = new FakeRemote(store);
    const remote = taggedRemote(fake, store, CAPTURE, earlier, silentLogger());
    await Promise.all([remote.exec(esx, ['a']), remote.exec(esx, ['b'])]);
    await remote.exec(esx, ['c']);
    expect(fake.sweepCalls).toHaveLength(1);
    expect(fake.calls.filter((c) => c.kind === 'exec' && !isSweep(c.argv))).toHaveLength(3);
    expect(await tagsOf()).toEqual([`esx-1:${remote.tag}`]);
  });

  it('prepares the host again for the next command after a failed preparation', async () => {
    const earlier = await earlierTags(['esx-1', OLD_A]);
    const fake = new FakeRemote(store);
    fake.sweeps = [sweep.noShell(), sweep.clean(1)];
    const remote = taggedRemote(fake, store, CAPTURE, earlier, silentLogger());
    await expectVclError(remote.exec(esx, ['ls']), 'REMOTE_LEFTOVER');
    const r = await remote.exec(esx, ['ls']);
    expect(r.stdout).toBe('ok ls');
    expect(fake.sweepCalls).toHaveLength(2);
    expect(await tagsOf()).toEqual([`esx-1:${remote.tag}`]);
  });

  it('prepares both hosts of a host-to-host copy, and tags the copy', async () => {
    const earlier = await earlierTags(['esx-1', OLD_A], ['repo-1', OLD_OTHER]);
    const fake = new FakeRemote(store);
    const remote = taggedRemote(fake, store, CAPTURE, earlier, silentLogger());
    const from = { host: esx, path: '/vmfs/disk.vmdk' };
    const to = { host: repo, path: '/srv/images/disk.vmdk' };
    const r = await remote.copy(from, to, { expectedSha256: 'c'.repeat(64) });
    expect(r).toEqual(COPIED);
    expect(
      fake.sweepCalls.map((c) => [c.kind === 'exec' && c.host, c.kind === 'exec' && c.argv.at(-1)]),
    ).toEqual([
      ['esx-1', OLD_A],
      ['repo-1', OLD_OTHER],
    ]);
    expect(fake.calls.at(-1)).toEqual({
      kind: 'copy',
      from,
      to,
      options: { expectedSha256: 'c'.repeat(64), tag: remote.tag },
    });
    expect(await tagsOf()).toEqual([`esx-1:${remote.tag}`, `repo-1:${remote.tag}`]);
  });

  it('prepares only the remote end of a copy from this machine', async () => {
    const fake = new FakeRemote(store);
    const remote = taggedRemote(fake, store, CAPTURE, [], silentLogger());
    await remote.copy({ path: '/tmp/local.img' }, { host: repo, path: '/srv/x.img' });
    expect(fake.calls).toEqual([
      {
        kind: 'copy',
        from: { path: '/tmp/local.img' },
        to: { host: repo, path: '/srv/x.img' },
        options: { tag: remote.tag },
      },
    ]);
    expect(await tagsOf()).toEqual([`repo-1:${remote.tag}`]);
  });

  it('gives up on an aborted command at once, while the host’s preparation goes on for the others', async () => {
    const earlier = await earlierTags(['esx-1', OLD_A]);
    const fake = new FakeRemote(store);
    let release!: () => void;
    fake.gate = new Promise<void>((r) => {
      release = r;
    });
    const remote = taggedRemote(fake, store, CAPTURE, earlier, silentLogger());
    const controller = new AbortController();
    const aborted = remote.exec(esx, ['ls'], { signal: controller.signal });
    const other = remote.exec(esx, ['df']);
    await new Promise((r) => setImmediate(r));
    expect(fake.sweepCalls).toHaveLength(1);
    controller.abort();
    await expectVclError(aborted, 'ABORTED', /^aborted$/);
    release();
    expect((await other).stdout).toBe('ok df');
    expect(fake.sweepCalls).toHaveLength(1);
    expect(
      fake.calls.filter((c) => c.kind === 'exec' && !isSweep(c.argv)).map((c) => c.kind === 'exec' && c.argv),
    ).toEqual([['df']]);
    expect(await tagsOf()).toEqual([`esx-1:${remote.tag}`]);
  });

  it('refuses a command whose signal is already aborted, and still prepares the host', async () => {
    const earlier = await earlierTags(['esx-1', OLD_A]);
    const fake = new FakeRemote(store);
    const remote = taggedRemote(fake, store, CAPTURE, earlier, silentLogger());
    await expectVclError(remote.exec(esx, ['ls'], { signal: AbortSignal.abort() }), 'ABORTED', /^aborted$/);
    await expectVclError(
      remote.copy({ path: '/tmp/a' }, { host: repo, path: '/b' }, { signal: AbortSignal.abort() }),
      'ABORTED',
      /^aborted$/,
    );
    await remote.exec(esx, ['df']);
    expect(fake.sweepCalls).toHaveLength(1);
    expect(fake.calls.filter((c) => !(c.kind === 'exec' && isSweep(c.argv)))).toEqual([
      expect.objectContaining({ kind: 'exec', argv: ['df'] }),
    ]);
    expect(await tagsOf()).toEqual([`esx-1:${remote.tag}`, `repo-1:${remote.tag}`]);
  });

  it('passes `answers` through, bound to the remote, only when the remote has it', async () => {
    const plain = taggedRemote(new FakeRemote(), store, CAPTURE, [], silentLogger());
    expect(plain.answers).toBeUndefined();
    expect('answers' in plain).toBe(false);

    const answering = new AnsweringRemote();
    const remote = taggedRemote(answering, store, CAPTURE, [], silentLogger());
    const answers = remote.answers;
    expect(answers).toBeDefined();
    expect(await answers?.(esx, { timeoutMs: 100 })).toBe(true);
    expect(answering.asked).toEqual(['esx-1']);
    // Only a probe: nothing recorded, nothing run.
    expect(answering.calls).toEqual([]);
    expect(await tagsOf()).toEqual([]);
  });
});
