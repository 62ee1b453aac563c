/**
 * Unit costs of the SSH transport on the runner's side (docs/performance-scale.md): CPU time of this
 * process per command on a warm connection, per connection (handshake and first command), and per
 * "does sshd answer?" probe of a computer that is down. The lab runs in its own process.
 *
 * And the memory one open connection holds: `--held` guests each get a connection and one command, then
 * resident, heap and external memory are compared with before (after full GCs; run with --expose-gc).
 *
 * Usage: npx tsx --expose-gc bench/ssh-units.ts [--commands 3000] [--connections 200] [--probes 500]
 *        [--held 300]
 */
import { parseArgs } from 'node:util';
import { inventoryHosts } from '../src/inventory/hosts.js';
import { COMPUTER_KINDS, spawnLab } from '../src/lab/index.js';
import { SshPool } from '../src/ssh/index.js';

const { values: args } = parseArgs({
  options: {
    commands: { type: 'string', default: '3000' },
    connections: { type: 'string', default: '200' },
    probes: { type: 'string', default: '500' },
    held: { type: 'string', default: '300' },
  },
});

const cpuMs = (since: NodeJS.CpuUsage) => {
  const u = process.cpuUsage(since);
  return (u.user + u.system) / 1000;
};

async function main(): Promise<void> {
  const held = Number(args.held);
  const lab = await spawnLab({
    computers: {
      ...Object.fromEntries(COMPUTER_KINDS.map((k) => [k, 1])),
      'libvirt-linux': Math.max(1, held),
    },
  });
  try {
    const hosts = inventoryHosts(lab.inventory);
    const host = hosts.get('libvirt-host');
    if (host === undefined) throw new Error('no libvirt-host in the lab');
    const row = (what: string, n: number, ms: number, wall: number) =>
      console.log(
        `${what.padEnd(44)} ${n} in ${wall.toFixed(0)} ms wall: ${(ms / n).toFixed(3)} ms CPU each`,
      );

    // Commands on a warm connection, 8 at a time (the host's channels).
    const pool = new SshPool();
    await pool.exec(host, ['true']);
    for (let i = 0; i < 200; i++) await pool.exec(host, ['true']); // warm-up
    let n = Number(args.commands);
    let t0 = performance.now();
    let c0 = process.cpuUsage();
    let next = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next++ < n) await pool.exec(host, ['virsh', 'domstate', 'nonexistent'], { check: false });
      }),
    );
    row('command on a warm connection (8 at a time)', n, cpuMs(c0), performance.now() - t0);
    await pool.close();

    // New connections: handshake, authentication and one command, one at a time.
    n = Number(args.connections);
    t0 = performance.now();
    c0 = process.cpuUsage();
    for (let i = 0; i < n; i++) {
      const p = new SshPool();
      await p.exec(host, ['true']);
      await p.close();
    }
    row('connection + first command (one at a time)', n, cpuMs(c0), performance.now() - t0);

    // Probes of a computer that is down (the lab resets its connections at once).
    const guestName = Object.keys(lab.inventory.computers)[0] as string;
    const guestHostName = (lab.inventory.computers[guestName] as { host?: string }).host;
    const guest = guestHostName === undefined ? undefined : hosts.get(guestHostName);
    if (guest !== undefined) {
      await new SshPool().exec(guest, ['poweroff'], { expectDisconnect: true, check: false }).catch(() => {});
      await new Promise((r) => setTimeout(r, 1500));
      const probe = new SshPool();
      n = Number(args.probes);
      t0 = performance.now();
      c0 = process.cpuUsage();
      let answered = 0;
      for (let i = 0; i < n; i++) if (await probe.answers(guest, { timeoutMs: 1000 })) answered++;
      row(`probe of a computer that is down (${answered} answered)`, n, cpuMs(c0), performance.now() - t0);
    }

    // Memory held by open connections (one per guest, as captures hold them).
    const gc = (globalThis as { gc?: () => void }).gc;
    if (held > 0 && gc !== undefined) {
      const guests = Object.values(lab.inventory.computers)
        .map((c) => hosts.get(c.host))
        .flatMap((h) => (h?.name.startsWith('lv-linux') && h.name !== guestHostName ? [h] : []))
        .slice(0, held);
      const settle = async () => {
        for (let i = 0; i < 3; i++) {
          gc();
          await new Promise((r) => setTimeout(r, 100));
        }
        return { ...process.memoryUsage() };
      };
      const m0 = await settle();
      const pool = new SshPool();
      for (let i = 0; i < guests.length; i += 25) {
        await Promise.all(guests.slice(i, i + 25).map((g) => pool.exec(g, ['true'])));
      }
      const m1 = await settle();
      const per = (k: 'rss' | 'heapUsed' | 'external' | 'arrayBuffers') =>
        `${k} ${((m1[k] - m0[k]) / 1024 / guests.length).toFixed(1)} KiB`;
      console.log(
        `open connection held (${guests.length}), each: ${per('rss')}, ${per('heapUsed')}, ${per('external')}, ${per('arrayBuffers')}`,
      );
      await pool.close();
    }
  } finally {
    await lab.stop();
  }
}

await main();
