/**
 * The world model of one computer: its power state and how it moves (booting and going down take
 * `bootMs`/`downMs`), what runs while it is on (its OS, or for xCAT the capture environment), a boot id
 * that changes at every boot, and the hypervisor's lifecycle events (`virsh event`). Every timer is owned
 * here so that `dispose()` stops the computer cold.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { ComputerKind, Os, PowerState, Provisioner } from './types.js';

export type Running = 'os' | 'captureEnv';
/** Why a computer is off, as `virsh domstate --reason` says it. */
export type StopReason = 'shutdown' | 'destroyed' | 'unknown';

export interface LifecycleEvent {
  /** libvirt's event and detail, e.g. `Stopped` / `Shutdown`. */
  event: 'Started' | 'Stopped';
  detail: 'Booted' | 'Shutdown' | 'Destroyed';
}

export interface ComputerTiming {
  bootMs: number;
  downMs: number;
}

/** Which graceful shutdowns a computer ignores (from the `neverPowersOff` fault). */
export type ShutdownResistance = 'ignore' | 'hang' | undefined;

export interface ComputerEvents {
  power: [PowerState];
  lifecycle: [LifecycleEvent];
}

export class Computer extends EventEmitter<ComputerEvents> {
  power: PowerState = 'on';
  running: Running | undefined = 'os';
  bootId: string | undefined;
  boots = 1;
  stopReason: StopReason = 'unknown';
  /** What the next boot starts (xCAT: the capture environment after `nodeset osimage=`). */
  nextBoot: () => Running = () => 'os';
  private timer: NodeJS.Timeout | undefined;
  private lastWindowsBoot = 0;
  private disposed = false;

  constructor(
    readonly name: string,
    readonly kind: ComputerKind,
    readonly os: Os,
    readonly provisioner: Provisioner,
    private readonly timing: ComputerTiming,
    private readonly resistance: () => ShutdownResistance,
  ) {
    super();
    this.bootId = this.newBootId();
  }

  /** The guest's own SSH server answers only while its OS runs. */
  get answersSsh(): boolean {
    return this.power === 'on' && this.running === 'os';
  }

  /** Power button / `virsh start` / `power.on` / `rpower on`. False when it was not off. */
  powerOn(): boolean {
    if (this.power !== 'off' || this.disposed) return false;
    this.setPower('booting');
    this.emit('lifecycle', { event: 'Started', detail: 'Booted' });
    this.after(this.timing.bootMs, () => this.boot());
    return true;
  }

  /**
   * A graceful shutdown: the OS's own `shutdown`, ACPI (`virsh shutdown`) or VMware Tools. Returns false
   * when the computer ignores it. `force` is for the lab's own shutdowns (the capture environment halting).
   */
  shutdown(force = false): boolean {
    if (this.power === 'off' || this.power === 'goingDown') return true;
    const resist = force ? undefined : this.resistance();
    if (resist === 'ignore') return false;
    this.goDown();
    if (resist === 'hang') return true;
    this.after(this.timing.downMs, () => this.stop('shutdown'));
    return true;
  }

  /** The OS restarts: goes down, boots again with a new boot id (no lifecycle event: the domain stays up). */
  reboot(): boolean {
    if (this.power !== 'on') return this.power !== 'off';
    const resist = this.resistance();
    if (resist === 'ignore') return false;
    this.goDown();
    if (resist === 'hang') return true;
    this.after(this.timing.downMs, () => {
      this.setPower('booting');
      this.after(this.timing.bootMs, () => this.boot());
    });
    return true;
  }

  /** Hard power off (`virsh destroy`, `power.off`, `rpower off`): immediate, whatever runs. */
  hardOff(): boolean {
    if (this.power === 'off') return false;
    clearTimeout(this.timer);
    this.stop('destroyed');
    return true;
  }

  dispose(): void {
    this.disposed = true;
    clearTimeout(this.timer);
    this.removeAllListeners();
  }

  private goDown(): void {
    clearTimeout(this.timer);
    this.running = undefined;
    this.setPower('goingDown');
  }

  private boot(): void {
    this.running = this.nextBoot();
    this.boots++;
    this.bootId = this.newBootId();
    this.setPower('on');
  }

  private stop(reason: StopReason): void {
    this.running = undefined;
    this.bootId = undefined;
    this.stopReason = reason;
    this.setPower('off');
    this.emit('lifecycle', { event: 'Stopped', detail: reason === 'destroyed' ? 'Destroyed' : 'Shutdown' });
  }

  private after(ms: number, fn: () => void): void {
    clearTimeout(this.timer);
    if (this.disposed) return;
    this.timer = setTimeout(fn, ms);
  }

  private setPower(state: PowerState): void {
    this.power = state;
    this.emit('power', state);
  }

  /** Linux: a random UUID (`/proc/sys/kernel/random/boot_id`); Windows: WMI's LastBootUpTime, unique. */
  private newBootId(): string {
    if (this.os === 'linux') return randomUUID();
    const now = Math.max(Date.now(), this.lastWindowsBoot + 1);
    this.lastWindowsBoot = now;
    const d = new Date(now);
    const p = (n: number, w = 2) => String(n).padStart(w, '0');
    return (
      `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}` +
      `${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}.${p(d.getUTCMilliseconds() * 1000, 6)}+000`
    );
  }
}
