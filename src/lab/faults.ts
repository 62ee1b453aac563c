/**
 * The fault registry: faults are added and cleared while the lab runs, matched by kind, host, command
 * and path, in the order they were added, and used up after `times` firings.
 */
import { posix } from 'node:path';
import type { CommandMatch, Fault, FaultHandle, HostMatch, LabFaults, PathMatch } from './types.js';

interface Entry {
  id: number;
  fault: Fault;
  fired: number;
  remaining: number;
}

export class FaultRegistry implements LabFaults {
  private readonly entries: Entry[] = [];
  private nextId = 1;
  /** Checks the host and computer names a fault gives (a typo would make it never fire). */
  checkNames: (fault: Fault) => void = () => {};
  /** Called with each fault once added (the lab drops the connections of a host made unreachable). */
  added: (fault: Fault) => void = () => {};

  add(fault: Fault): FaultHandle {
    validate(fault);
    this.checkNames(fault);
    // A full disk and a computer that will not power off are states, not events: they last until cleared.
    const lasting =
      fault.kind === 'diskFull' || fault.kind === 'neverPowersOff' || fault.kind === 'unreachable';
    const times =
      'times' in fault && fault.times !== undefined ? fault.times : lasting ? Number.POSITIVE_INFINITY : 1;
    const entry: Entry = {
      id: this.nextId++,
      fault,
      fired: 0,
      remaining: times,
    };
    this.entries.push(entry);
    this.added(fault);
    return this.handle(entry);
  }

  clear(handle?: FaultHandle | number): void {
    if (handle === undefined) this.entries.length = 0;
    else {
      const id = typeof handle === 'number' ? handle : handle.id;
      const i = this.entries.findIndex((e) => e.id === id);
      if (i >= 0) this.entries.splice(i, 1);
    }
  }

  list(): FaultHandle[] {
    return this.entries.map((e) => this.handle(e));
  }

  /**
   * The first live fault of `kind` that `test` accepts, counted as fired (and dropped once used up).
   * Faults that are not consumed per use (`neverPowersOff`) are looked at with `peek`.
   */
  take<K extends Fault['kind']>(
    kind: K,
    test: (f: Extract<Fault, { kind: K }>) => boolean,
  ): Extract<Fault, { kind: K }> | undefined {
    for (const e of this.entries) {
      if (e.fault.kind !== kind || e.remaining <= 0) continue;
      const f = e.fault as Extract<Fault, { kind: K }>;
      if (!test(f)) continue;
      e.fired++;
      e.remaining--;
      if (e.remaining <= 0) this.entries.splice(this.entries.indexOf(e), 1);
      return f;
    }
    return undefined;
  }

  peek<K extends Fault['kind']>(
    kind: K,
    test: (f: Extract<Fault, { kind: K }>) => boolean,
  ): Extract<Fault, { kind: K }> | undefined {
    for (const e of this.entries) {
      if (e.fault.kind === kind && e.remaining > 0 && test(e.fault as Extract<Fault, { kind: K }>))
        return e.fault as Extract<Fault, { kind: K }>;
    }
    return undefined;
  }

  /** Counts a firing of a fault found with `peek` (a byte budget consumed, for instance). */
  fire(fault: Fault): void {
    const e = this.entries.find((x) => x.fault === fault);
    if (e === undefined) return;
    e.fired++;
    e.remaining--;
    if (e.remaining <= 0) this.entries.splice(this.entries.indexOf(e), 1);
  }

  private handle(entry: Entry): FaultHandle {
    const registry = this;
    return {
      id: entry.id,
      fault: entry.fault,
      get fired() {
        return entry.fired;
      },
      get remaining() {
        return entry.remaining;
      },
      clear() {
        registry.clear(entry.id);
      },
    };
  }
}

function validate(fault: Fault): void {
  if ('times' in fault && fault.times !== undefined && !(fault.times > 0))
    throw new RangeError(`fault ${fault.kind}: times must be positive (got ${fault.times})`);
  if (fault.kind === 'failCommand' && !Number.isInteger(fault.exitCode))
    throw new RangeError('fault failCommand: exitCode must be an integer');
}

export function hostMatches(match: HostMatch | undefined, host: string): boolean {
  if (match === undefined) return true;
  return typeof match === 'string' ? match === host : match.includes(host);
}

export function commandMatches(match: CommandMatch | undefined, argv: readonly string[]): boolean {
  if (match === undefined) return true;
  if (match instanceof RegExp) return match.test(argv.join(' '));
  return match.length <= argv.length && match.every((w, i) => argv[i] === w);
}

/** The transport writes `<dir>/.<name>.vcl-tmp-<hex>` before renaming it to `<dir>/<name>`. */
const TEMP_NAME = /^\.(.+)\.vcl-tmp-[0-9a-f]+$/;

export function finalNameOf(path: string): string {
  const m = TEMP_NAME.exec(posix.basename(path));
  return m ? posix.join(posix.dirname(path), m[1] as string) : path;
}

export function pathMatches(match: PathMatch | undefined, path: string): boolean {
  if (match === undefined) return true;
  const candidates = [path, finalNameOf(path)];
  if (match instanceof RegExp) return candidates.some((p) => match.test(p));
  const m = match.replace(/\/+$/, '') || '/';
  return candidates.some((p) => p === m || p.startsWith(m === '/' ? '/' : `${m}/`));
}
