/**
 * What a dead runner left running on a host, against a real OpenSSH sshd on loopback: its commands (and
 * what they started, also outside their process group) outlive its connection, carry its tag, and the next
 * runner's first command on that host kills them and confirms it, while other processes live on.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Remote } from '../../src/drivers/contract.js';
import { silentLogger } from '../../src/log.js';
import { taggedRemote } from '../../src/runner/leftovers.js';
import { LEFTOVER_SWEEP_SCRIPT, SshPool } from '../../src/ssh/index.js';
import type { SqliteCaptureStore } from '../../src/store/index.js';
import { pidsWithTag, waitFor } from '../helpers/procs.js';
import { type SshdServer, sshdAvailable, startSshd } from '../helpers/sshd.js';
import { openStore, REPO, seed, tempFolder } from '../store/helpers.js';

const available = sshdAvailable('test/ssh/leftovers.test.ts');

/** A fresh store in a temporary folder holding one capture `id` of computer `computer`. */
async function storeWithCapture(id: string, computer: string) {
  const folder = tempFolder();
  const store = openStore(folder.file('store.sqlite'));
  await seed(store);
  await store.createCapture({
    id,
    computer,
    imageId: 12345,
    provisioner: 'libvirt',
    os: 'linux',
    repository: REPO,
  });
  return { folder, store };
}

describe.skipIf(!available)('leftover remote commands (OpenSSH sshd)', () => {
  let server: SshdServer;
  let folder: ReturnType<typeof tempFolder>;
  let store: SqliteCaptureStore;

  beforeAll(async () => {
    server = await startSshd();
    ({ folder, store } = await storeWithCapture('cap-1', 'pc-01'));
  });
  afterAll(async () => {
    await store?.close();
    folder?.cleanup();
    await server?.stop();
  });

  it('the next execution kills what a dead one left (also outside its group), and nothing else', async () => {
    const host = server.sshHost();
    const deadPool = new SshPool();
    const dead = taggedRemote(deadPool, store, 'cap-1', [], silentLogger());
    // A long command that also starts a child in a session of its own (it leaves the process group).
    const leftover = dead
      .exec(host, ['sh', '-c', 'setsid sleep 300 & exec sleep 301'], { timeoutMs: 120_000 })
      .catch((err: unknown) => err);
    await waitFor(() => pidsWithTag(dead.tag).length === 2, 10_000, 'the dead runner’s two processes');
    expect(await store.remoteTags('cap-1')).toEqual([
      expect.objectContaining({ host: host.name, tag: dead.tag }),
    ]);
    // The runner goes: its connection ends. The child in its own session always stays (no signal to the
    // command's process group reaches it); the command itself may stay too (seen in most runs, not in all:
    // the pool's close can race a signal to the group).
    await deadPool.close();
    await leftover;
    expect(pidsWithTag(dead.tag).length).toBeGreaterThanOrEqual(1);

    // A process of another execution on the same host must survive the sweep.
    const otherPool = new SshPool();
    const other = taggedRemote(otherPool, store, 'cap-1', [], silentLogger());
    const bystander = other.exec(host, ['sleep', '302'], { timeoutMs: 120_000 }).catch((err: unknown) => err);
    await waitFor(() => pidsWithTag(other.tag).length === 1, 10_000, 'the bystander');

    const pool = new SshPool();
    try {
      const next = taggedRemote(
        pool,
        store,
        'cap-1',
        (await store.remoteTags('cap-1')).filter((r) => r.tag === dead.tag),
        silentLogger(),
      );
      const r = await next.exec(host, ['sh', '-c', 'echo "$VCL_CAPTURE_TAG"']);
      // The sweep ran before the command, and the command carries the new execution's tag.
      expect(r.stdout).toBe(`${next.tag}\n`);
      expect(pidsWithTag(dead.tag)).toEqual([]);
      expect(pidsWithTag(other.tag)).toHaveLength(1);
      const tags = (await store.remoteTags('cap-1')).map((t) => t.tag).sort();
      expect(tags).toEqual([next.tag, other.tag].sort());
    } finally {
      await pool.close();
      await otherPool.close();
      await bystander;
      await store.forgetRemoteTags('cap-1');
    }
  });

  it('a copy carries the tag on both hosts, and the sweep also runs before a copy', async () => {
    const host = server.sshHost();
    const pool = new SshPool();
    try {
      // An earlier execution's tag with nothing left running: the sweep finds nothing and forgets it.
      await store.recordRemoteTag('cap-1', host.name, '0123456789abcdef');
      const next = taggedRemote(pool, store, 'cap-1', await store.remoteTags('cap-1'), silentLogger());
      const src = `${folder.dir}/src.bin`;
      await next.exec(host, ['sh', '-c', 'head -c 100000 /dev/urandom > "$1"', 'sh', src]);
      const copied = await next.copy({ host, path: src }, { host, path: `${folder.dir}/dst.bin` });
      expect(copied.bytes).toBe(100_000);
      expect((await store.remoteTags('cap-1')).map((t) => t.tag)).toEqual([next.tag]);
    } finally {
      await pool.close();
      await store.forgetRemoteTags('cap-1');
    }
  });
});

describe('a sweep that cannot confirm', () => {
  let folder: ReturnType<typeof tempFolder>;
  let store: SqliteCaptureStore;

  beforeAll(async () => {
    ({ folder, store } = await storeWithCapture('cap-2', 'pc-02'));
  });
  afterAll(async () => {
    await store?.close();
    folder?.cleanup();
  });

  /** A transport that answers the sweep as a host would, and records every other command. */
  function fakeRemote(sweep: { code: number | null; stdout: string; stderr: string }) {
    const sent: string[][] = [];
    const remote: Remote = {
      async exec(_host, argv) {
        if (argv[2] === LEFTOVER_SWEEP_SCRIPT)
          return { ...sweep, signal: null, durationMs: 1, disconnected: false };
        sent.push([...argv]);
        return { code: 0, signal: null, stdout: '', stderr: '', durationMs: 1, disconnected: false };
      },
      copy: () => Promise.reject(new Error('no copies here')),
    };
    return { remote, sent };
  }
  const host = { name: 'kvm', host: '127.0.0.1', username: 'root', privateKey: 'unused' };
  const earlier = [{ host: 'kvm', tag: '0123456789abcdef', recordedAt: '' }];

  it.each([
    [
      'survivors after SIGKILL',
      { code: 1, stdout: 'killed 2\n', stderr: 'left 1\n' },
      /1 process\(es\).*did not end/,
    ],
    [
      'a script that did not run',
      { code: 127, stdout: '', stderr: 'sh: not found\n' },
      /could not look.*exit 127/,
    ],
  ])(
    '%s: the command fails with REMOTE_LEFTOVER in its step and is never sent',
    async (_what, sweep, says) => {
      const { remote, sent } = fakeRemote(sweep);
      const tagged = taggedRemote(remote, store, 'cap-2', earlier, silentLogger());
      const err = await tagged
        .exec(host, ['qemu-img', 'convert'], { step: 'copy_image' })
        .catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'REMOTE_LEFTOVER', step: 'copy_image' });
      expect((err as Error).message).toMatch(says);
      expect(sent).toEqual([]);
      // Nothing recorded for this execution: the next command sweeps again.
      expect(await store.remoteTags('cap-2')).toEqual([]);
    },
  );

  it('a host without /proc (exit 3): a warning, the earlier tag forgotten, the command runs', async () => {
    await store.recordRemoteTag('cap-2', 'kvm', '0123456789abcdef');
    const { remote, sent } = fakeRemote({ code: 3, stdout: '', stderr: '' });
    const tagged = taggedRemote(remote, store, 'cap-2', await store.remoteTags('cap-2'), silentLogger());
    await tagged.exec(host, ['vmkfstools', '-i'], { step: 'clone_disk' });
    expect(sent).toEqual([['vmkfstools', '-i']]);
    expect((await store.remoteTags('cap-2')).map((t) => t.tag)).toEqual([tagged.tag]);
  });
});
