/**
 * Disk copy benchmark (`npm run bench:disk`, issue 16): three source images on a loopback OpenSSH host,
 *   (1) raw, 4 GiB virtual with 256 MiB of random data and 256 MiB of written zeros (the rest holes),
 *   (2) the same disk as qcow2 (`qemu-img convert -O qcow2`),
 *   (3) 1 GiB of random data,
 * each copied by
 *   (a) this transport, host -> local file (zstd on the wire when both ends have it, sparse destination,
 *       sha256 of the stored bytes),
 *   (a2) this transport, host -> host (the relay through the runner the capture paths use),
 *   (b) `scp`, (c) `scp` then `sha256sum` of the copy,
 *   (d) the zstd pipe `ssh host 'zstd -1 -c disk' | zstd -d -o copy`,
 *   (e) `qemu-img convert` alone, on the host, into the same format (what same-host libvirt does),
 * printing time, bytes on the wire, the destination's allocated size (`stat %b*%B`) and the ratios.
 * Targets: (1) (a)/(d) <= 1.3 and allocated(a) <= 1.1x the non-zero data; (3) (c)/(a) >= 1.5; the recorded
 * sha256 equal to `sha256sum` of the stored file in every case (the benchmark fails otherwise).
 *
 * `BENCH_DISK_SCALE` (default 1) scales every size, e.g. 0.125 for a quick check; `BENCH_DISK_PROFILES`
 * picks profiles (e.g. `1,3`). Each figure is one sample on a machine shared with other work.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { SshPool, toCommandLine } from '../src/ssh/index.js';
import { sshdAvailable, startSshd } from '../test/helpers/sshd.js';

const MiB = 1024 * 1024;
const scale = Number(process.env.BENCH_DISK_SCALE ?? 1);
const profiles = new Set((process.env.BENCH_DISK_PROFILES ?? '1,2,3').split(',').map(Number));
const sized = (mib: number) => Math.max(1, Math.round(mib * scale)) * MiB;

interface Row {
  label: string;
  seconds: number;
  wire: number | undefined;
  allocated: number;
  sha256: string | undefined;
  stored: string;
}

function sh(script: string, ...args: string[]): string {
  const r = spawnSync('sh', ['-c', script, 'sh', ...args], { encoding: 'utf8', maxBuffer: 16 * MiB });
  if (r.status !== 0) throw new Error(`sh -c ${script} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

const sha256sum = (path: string) => sh('sha256sum -- "$1"', path).split(' ')[0] ?? '';
const allocatedOf = (path: string) => {
  const [b, B] = sh('stat -c "%b %B" -- "$1"', path).trim().split(' ');
  return Number(b) * Number(B);
};

async function timed<T>(fn: () => T | Promise<T>): Promise<{ value: T; seconds: number }> {
  const t = process.hrtime.bigint();
  const value = await fn();
  return { value, seconds: Number(process.hrtime.bigint() - t) / 1e9 };
}

/** Profile 1's disk: random data in four places, one run of written zeros, holes elsewhere. */
function makeSparseRaw(path: string, virtual: number, random: number, zeros: number): void {
  sh('truncate -s "$2" "$1"', path, String(virtual));
  const quarter = random / 4;
  for (let i = 0; i < 4; i++) {
    const at = Math.floor((virtual / 4) * i + virtual / 16);
    sh(
      'head -c "$2" /dev/urandom | dd of="$1" bs=1M seek="$3" oflag=seek_bytes conv=notrunc status=none',
      path,
      String(quarter),
      String(at),
    );
  }
  sh(
    'dd if=/dev/zero of="$1" bs=1M count="$2" seek="$3" iflag=count_bytes oflag=seek_bytes conv=notrunc status=none',
    path,
    String(zeros),
    // Between the third and the fourth piece of data (at 5/8 of the disk), overlapping neither.
    String(Math.floor((virtual * 5) / 8)),
  );
}

async function main(): Promise<void> {
  if (!sshdAvailable('bench/disk.ts')) process.exit(1);
  const server = await startSshd({ lifetimeMs: 60 * 60_000 });
  const pool = new SshPool();
  const host = server.sshHost();
  const second = server.sshHost({ name: 'second' });
  const sshArgs = [...server.clientOptions(), '-p', String(server.port), `${server.username}@127.0.0.1`];
  const scpArgs = (src: string, dest: string) => [
    '-q',
    ...server.clientOptions(),
    '-P',
    String(server.port),
    `${server.username}@127.0.0.1:${src}`,
    dest,
  ];
  let failed = false;
  try {
    const sources: Array<{ n: number; name: string; path: string; nonZero: number; format?: string }> = [];
    const raw = join(server.dir, 'disk.raw');
    const random = sized(256);
    if (profiles.has(1) || profiles.has(2)) makeSparseRaw(raw, sized(4096), random, sized(256));
    if (profiles.has(1))
      sources.push({ n: 1, name: 'sparse raw', path: raw, nonZero: random, format: 'raw' });
    if (profiles.has(2)) {
      const qcow2 = join(server.dir, 'disk.qcow2');
      sh('qemu-img convert -O qcow2 "$1" "$2"', raw, qcow2);
      sources.push({ n: 2, name: 'qcow2', path: qcow2, nonZero: random, format: 'qcow2' });
    }
    if (profiles.has(3)) {
      const rnd = join(server.dir, 'random.bin');
      sh('head -c "$2" /dev/urandom > "$1"', rnd, String(sized(1024)));
      sources.push({ n: 3, name: 'random', path: rnd, nonZero: sized(1024) });
    }
    console.log(
      `scale ${scale}; load average ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}; zstd ${sh('zstd --version').trim()}`,
    );
    for (const src of sources) {
      sh('cat -- "$1" > /dev/null', src.path); // in the page cache, as for every method below
      const size = Number(sh('stat -c %s -- "$1"', src.path).trim());
      const expected = sha256sum(src.path);
      const rows: Row[] = [];
      const dest = (tag: string) => join(server.dir, `${src.n}-${tag}`);

      const a = await timed(() => pool.copy({ host, path: src.path }, { path: dest('a') }));
      rows.push({
        label: '(a) transport -> local',
        seconds: a.seconds,
        wire: a.value.wireBytes,
        allocated: allocatedOf(dest('a')),
        sha256: a.value.sha256,
        stored: dest('a'),
      });
      const a2 = await timed(() => pool.copy({ host, path: src.path }, { host: second, path: dest('a2') }));
      rows.push({
        label: '(a2) transport host -> host',
        seconds: a2.seconds,
        wire: a2.value.wireBytes,
        allocated: allocatedOf(dest('a2')),
        sha256: a2.value.sha256,
        stored: dest('a2'),
      });
      const b = await timed(() => execFileSync('scp', scpArgs(src.path, dest('b'))));
      rows.push({
        label: '(b) scp',
        seconds: b.seconds,
        wire: size,
        allocated: allocatedOf(dest('b')),
        sha256: undefined,
        stored: dest('b'),
      });
      const c = await timed(() => {
        execFileSync('scp', scpArgs(src.path, dest('c')));
        return sha256sum(dest('c'));
      });
      rows.push({
        label: '(c) scp + sha256sum',
        seconds: c.seconds,
        wire: size,
        allocated: allocatedOf(dest('c')),
        sha256: c.value,
        stored: dest('c'),
      });
      const d = await timed(() =>
        sh(
          'out="$1"; shift; ssh "$@" | zstd -q -d -o "$out"',
          dest('d'),
          ...sshArgs,
          toCommandLine(['zstd', '-q', '-1', '-T0', '-c', '--', src.path]),
        ),
      );
      rows.push({
        label: '(d) zstd pipe',
        seconds: d.seconds,
        wire: Number(sh('zstd -q -1 -T0 -c -- "$1" | wc -c', src.path).trim()),
        allocated: allocatedOf(dest('d')),
        sha256: undefined,
        stored: dest('d'),
      });
      if (src.format !== undefined) {
        const e = await timed(() =>
          sh('qemu-img convert -O "$3" "$1" "$2"', src.path, dest('e'), src.format as string),
        );
        rows.push({
          label: `(e) qemu-img convert -O ${src.format}`,
          seconds: e.seconds,
          wire: undefined,
          allocated: allocatedOf(dest('e')),
          sha256: undefined,
          stored: dest('e'),
        });
      }

      console.log(
        `\n(${src.n}) ${src.name}: ${(size / MiB).toFixed(0)} MiB, non-zero data ${(src.nonZero / MiB).toFixed(0)} MiB, sha256 ${expected}`,
      );
      console.log(
        `${'method'.padEnd(32)} ${'time'.padStart(8)} ${'wire'.padStart(10)} ${'allocated'.padStart(11)}  sha256`,
      );
      for (const r of rows) {
        const stored = sha256sum(r.stored);
        // Every stored copy (qemu-img's raw too) holds the source's bytes; recorded hashes must match it.
        const same = src.format === 'qcow2' && r.label.startsWith('(e)') ? true : stored === expected;
        const recorded = r.sha256 === undefined ? 'n/a' : r.sha256 === stored ? 'ok' : 'DIFFERS';
        if (!same || recorded === 'DIFFERS') failed = true;
        console.log(
          `${r.label.padEnd(32)} ${r.seconds.toFixed(2).padStart(6)} s ${r.wire === undefined ? '-'.padStart(10) : `${(r.wire / MiB).toFixed(0).padStart(6)} MiB`} ${(r.allocated / MiB).toFixed(0).padStart(7)} MiB  recorded ${recorded}, stored ${same ? 'ok' : 'DIFFERS'}`,
        );
        rmSync(r.stored, { force: true });
      }
      const t = (prefix: string) => rows.find((r) => r.label.startsWith(prefix))?.seconds ?? Number.NaN;
      const ad = t('(a)') / t('(d)');
      const alloc = (rows[0]?.allocated ?? 0) / src.nonZero;
      const ca = t('(c)') / t('(a)');
      console.log(
        `(a)/(d) = ${ad.toFixed(2)}${src.n === 1 ? ` (target <= 1.3: ${ad <= 1.3 ? 'met' : 'NOT met'})` : ''}; ` +
          `allocated(a)/non-zero = ${alloc.toFixed(2)}${src.n === 1 ? ` (target <= 1.1: ${alloc <= 1.1 ? 'met' : 'NOT met'})` : ''}; ` +
          `(c)/(a) = ${ca.toFixed(2)}${src.n === 3 ? ` (target >= 1.5: ${ca >= 1.5 ? 'met' : 'NOT met'})` : ''}; ` +
          `(a2)/(a) = ${(t('(a2)') / t('(a)')).toFixed(2)}`,
      );
    }
  } finally {
    await pool.close();
    await server.stop();
  }
  if (failed) {
    console.error('\na stored copy or a recorded sha256 differs from the source: see above');
    process.exit(1);
  }
}

await main();
