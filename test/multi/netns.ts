/**
 * Network namespaces for runner processes (test/multi/netns.test.ts): a bridge in this (the root)
 * namespace holds the hub address, on which PostgreSQL and the lab's SSH servers listen; each runner gets
 * a namespace of its own, joined to the bridge by a veth pair, with one address. Taking the veth's bridge
 * end down cuts that runner off (packets are dropped both ways: no reset, the connections just go quiet),
 * and putting it up again heals it, with the connections still open.
 *
 * Names carry this process's PID, so that `sweepStale()` can remove what a killed test run left behind,
 * and a process `exit` hook removes what is still there when the test process ends without `close()`.
 */
import { spawnSync } from 'node:child_process';

/** Runs `ip` with these arguments; throws with its stderr when it fails (unless `allowFail`). */
function ip(args: string[], allowFail = false): string {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0 && !allowFail) throw new Error(`ip ${args.join(' ')}: ${r.stderr || r.error}`);
  return r.stdout ?? '';
}

const NS_PREFIX = 'vcln';

function netnsProblem(): string | undefined {
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  for (const tool of ['ip', 'unshare', 'setpriv']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} not found`;
  }
  const probe = `${NS_PREFIX}-${process.pid}-probe`;
  const add = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' });
  if (add.status !== 0) return `ip netns add failed: ${add.stderr.trim()}`;
  ip(['netns', 'del', probe], true);
  const bridge = `vcbp${process.pid}`;
  const br = spawnSync('ip', ['link', 'add', bridge, 'type', 'bridge'], { encoding: 'utf8' });
  if (br.status !== 0) return `ip link add type bridge failed: ${br.stderr.trim()}`;
  ip(['link', 'del', bridge], true);
  return undefined;
}

/** As `postgresAvailable()`: false (with a loud warning) on a dev machine that cannot, a throw in CI. */
export function netnsAvailable(suite: string): boolean {
  const problem = netnsProblem();
  if (problem === undefined) return true;
  const message = `${suite}: ${problem}. Run as root with Debian's iproute2 and util-linux (apt-get install iproute2 util-linux).`;
  if (process.env.CI === 'true') throw new Error(`${message} (CI=true: failing instead of skipping)`);
  console.warn(`SKIPPING ${message}`);
  return false;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
};

/** Removes namespaces and links an earlier test process (now gone) left behind. */
export function sweepStale(): void {
  for (const line of ip(['netns', 'list'], true).split('\n')) {
    const m = /^(vcln-(\d+)-\S+)/.exec(line);
    if (m?.[1] && !alive(Number(m[2]))) ip(['netns', 'del', m[1]], true);
  }
  for (const line of ip(['-o', 'link', 'show'], true).split('\n')) {
    const m = /^\d+: (vc[bh](\d+)[a-z0-9]*)[@:]/.exec(line);
    if (m?.[1] && !alive(Number(m[2]))) ip(['link', 'del', m[1]], true);
  }
}

export interface RunnerNet {
  /** Namespace name (`ip netns exec <ns> ...`). */
  ns: string;
  /** The runner's address inside its namespace. */
  address: string;
  /** The veth end on the bridge: down is a partition. */
  link: string;
}

export interface Net {
  /** Address of the bridge in the root namespace: PostgreSQL and the lab listen here. */
  hub: string;
  /** The subnet, as a CIDR (for pg_hba). */
  cidr: string;
  runners: RunnerNet[];
  /** Cuts a runner off: its veth end on the bridge goes down. */
  partition(i: number): void;
  heal(i: number): void;
  /** Removes the namespaces, veths and the bridge (idempotent). */
  close(): void;
}

/** A /24 in 10.0.0.0/8 that no route of this machine covers. */
function freeSubnet(): string {
  const routes = ip(['-4', 'route', 'show', 'table', 'all'], true);
  for (let i = 0; i < 200; i += 1) {
    const prefix = `10.${200 + Math.floor(Math.random() * 50)}.${Math.floor(Math.random() * 256)}`;
    if (!routes.includes(`${prefix}.`)) return prefix;
  }
  throw new Error('no free 10.x.y.0/24 subnet found');
}

const open = new Set<Net>();
process.on('exit', () => {
  for (const n of open) n.close();
});

export function createNet(runners: number): Net {
  const id = process.pid;
  const prefix = freeSubnet();
  const bridge = `vcb${id}`;
  const made: RunnerNet[] = [];
  let closed = false;
  const net: Net = {
    hub: `${prefix}.1`,
    cidr: `${prefix}.0/24`,
    runners: made,
    partition: (i) => ip(['link', 'set', made[i]?.link ?? '?', 'down']),
    heal: (i) => ip(['link', 'set', made[i]?.link ?? '?', 'up']),
    close() {
      if (closed) return;
      closed = true;
      open.delete(net);
      // Deleting one end of a veth deletes both; the namespace goes with its last process.
      for (const r of made) {
        ip(['link', 'del', r.link], true);
        ip(['netns', 'del', r.ns], true);
      }
      ip(['link', 'del', bridge], true);
    },
  };
  open.add(net);
  try {
    ip(['link', 'add', bridge, 'type', 'bridge']);
    ip(['addr', 'add', `${net.hub}/24`, 'dev', bridge]);
    ip(['link', 'set', bridge, 'up']);
    for (let i = 0; i < runners; i += 1) {
      const r = { ns: `${NS_PREFIX}-${id}-r${i}`, address: `${prefix}.${10 + i}`, link: `vch${id}r${i}` };
      const inner = `vcp${id}r${i}`;
      made.push(r);
      ip(['netns', 'add', r.ns]);
      ip(['link', 'add', r.link, 'type', 'veth', 'peer', 'name', inner]);
      ip(['link', 'set', inner, 'netns', r.ns]);
      ip(['link', 'set', r.link, 'master', bridge]);
      ip(['link', 'set', r.link, 'up']);
      ip(['-n', r.ns, 'addr', 'add', `${r.address}/24`, 'dev', inner]);
      ip(['-n', r.ns, 'link', 'set', inner, 'up']);
      ip(['-n', r.ns, 'link', 'set', 'lo', 'up']);
    }
  } catch (err) {
    net.close();
    throw err;
  }
  return net;
}
