/**
 * Guest OS commands: what the Linux and Windows pre_capture plans (src/drivers/os-commands.ts) run, with
 * plausible output, acting on the guest's state (its accounts, domain membership, files). End-state
 * commands (`shutdown`, `shutdown.exe`, sysprep, `netdom /reboot`) take the computer down: the guest's SSH
 * sessions drop as it goes, and it powers off or boots again after the lab's power delay. Windows guests
 * are reached as VCL reaches them, through Cygwin's OpenSSH, so Windows tools run as plain commands beside
 * the POSIX ones.
 */
import { randomBytes } from 'node:crypto';
import type { CommandContext, GuestState, Handler } from '../core.js';
import { fail } from '../core.js';
import { POSIX_COMMANDS, statOf } from './posix.js';

function guestOf(ctx: CommandContext): GuestState {
  const g = ctx.host.guest;
  if (g === undefined) fail(127, `sh: 1: ${ctx.argv[0]}: not found`);
  return g;
}

function computerOf(ctx: CommandContext) {
  const c = ctx.host.computer;
  if (c === undefined) fail(127, `sh: 1: ${ctx.argv[0]}: not found`);
  return c;
}

/**
 * Takes the computer down. The sessions drop as it goes (so this command gets no exit status), unless
 * the computer ignores the request (the `neverPowersOff` fault), when the command just ends.
 */
async function goDown(ctx: CommandContext, how: 'off' | 'reboot'): Promise<number> {
  const c = computerOf(ctx);
  const accepted = how === 'off' ? c.shutdown() : c.reboot();
  if (!accepted || c.answersSsh) return 0;
  await ctx.sleep(Number.POSITIVE_INFINITY);
  return 0;
}

// ---------------------------------------------------------------- Linux

const BOOT_ID = '/proc/sys/kernel/random/boot_id';

const linuxCat: Handler = async (ctx) => {
  const args = ctx.argv.slice(1).filter((a) => a !== '--');
  if (args.length === 1 && args[0] === BOOT_ID) {
    await ctx.out(`${computerOf(ctx).bootId ?? ''}\n`);
    return 0;
  }
  return await (POSIX_COMMANDS.get('cat') as Handler)(ctx);
};

const shutdown: Handler = async (ctx) => {
  const args = ctx.argv.slice(1);
  if (args.includes('-c')) return 0;
  if (args.includes('-r')) return await goDown(ctx, 'reboot');
  if (args.includes('-h') || args.includes('-P') || args.includes('-H')) return await goDown(ctx, 'off');
  fail(1, 'shutdown: the lab needs -h, -P, -r or -c');
};

const linuxUserdel: Handler = async (ctx) => {
  const user = ctx.argv.slice(1).filter((a) => !a.startsWith('-'))[0];
  if (user === undefined) fail(2, `Usage: ${ctx.argv[0]} [options] LOGIN`);
  const g = guestOf(ctx);
  if (!g.users.delete(user))
    fail(ctx.argv[0] === 'deluser' ? 1 : 6, `${ctx.argv[0]}: user '${user}' does not exist`);
  return 0;
};

const pkill: Handler = async (ctx) => {
  const u = ctx.argv.indexOf('-u');
  const user = u >= 0 ? ctx.argv[u + 1] : undefined;
  // Exit 1 is pkill's "no process matched".
  return user !== undefined && guestOf(ctx).users.has(user) ? 0 : 1;
};

const passwd: Handler = async (ctx) => {
  const [opt, user = 'root'] = ctx.argv.slice(1);
  if (opt !== '-l') fail(1, 'passwd: the lab supports only -l USER');
  guestOf(ctx).rootLocked = user === 'root' || guestOf(ctx).rootLocked;
  await ctx.out(`Locking password for user ${user}.\npasswd: Success\n`);
  return 0;
};

const runParts: Handler = async (ctx) => {
  const dir = ctx.argv.slice(1).filter((a) => !a.startsWith('--'))[0];
  if (dir === undefined) fail(1, 'run-parts: missing operand');
  const { real } = await ctx.host.fs.prepare(dir);
  const st = await statOf(real);
  if (!st?.isDirectory()) fail(1, `run-parts: failed to open directory ${dir}: No such file or directory`);
  // The scripts are the guest's; the lab does not run them and reports them as having succeeded.
  return 0;
};

const ok: Handler = async () => 0;

export const LINUX_COMMANDS: ReadonlyMap<string, Handler> = new Map<string, Handler>([
  ['cat', linuxCat],
  ['shutdown', shutdown],
  ['reboot', (ctx) => goDown(ctx, 'reboot')],
  ['poweroff', (ctx) => goDown(ctx, 'off')],
  ['halt', (ctx) => goDown(ctx, 'off')],
  ['userdel', linuxUserdel],
  ['deluser', linuxUserdel],
  ['pkill', pkill],
  ['umount', ok],
  ['passwd', passwd],
  ['iptables', ok],
  ['run-parts', runParts],
  [
    'hostname',
    async (ctx) => {
      await ctx.out(`${computerOf(ctx).name}\n`);
      return 0;
    },
  ],
  [
    'uname',
    async (ctx) => {
      await ctx.out(
        ctx.argv.includes('-a') ? `Linux ${computerOf(ctx).name} 5.15.0-lab x86_64 GNU/Linux\n` : 'Linux\n',
      );
      return 0;
    },
  ],
]);

// ---------------------------------------------------------------- Windows (Cygwin)

const CRLF = '\r\n';

const wmic: Handler = async (ctx) => {
  const args = ctx.argv.slice(1).map((a) => a.toLowerCase());
  const c = computerOf(ctx);
  const g = guestOf(ctx);
  const name = c.name.toUpperCase();
  if (args[0] === 'os' && args[1] === 'get' && args[2] === 'lastbootuptime') {
    await ctx.out(`\r${CRLF}\r${CRLF}LastBootUpTime=${c.bootId ?? ''}\r${CRLF}\r${CRLF}\r${CRLF}`);
    return 0;
  }
  if (args[0] === 'computersystem' && args[1] === 'get' && args[2] === 'partofdomain') {
    await ctx.out(
      `\r${CRLF}\r${CRLF}PartOfDomain=${g.inDomain ? 'TRUE' : 'FALSE'}\r${CRLF}\r${CRLF}\r${CRLF}`,
    );
    return 0;
  }
  if (args[0] === 'computersystem' && args[1] === 'set') {
    await ctx.out(
      `Updating property(s) of '\\\\${name}\\ROOT\\CIMV2:Win32_ComputerSystem.Name="${name}"'${CRLF}Property(s) update successful.${CRLF}`,
    );
    return 0;
  }
  if (args[0] === 'pagefileset' && args[1] === 'delete') {
    if (!g.pagefile) {
      await ctx.err(`No Instance(s) Available.${CRLF}`);
      return 0;
    }
    g.pagefile = false;
    await ctx.out(
      `Deleting instance \\\\${name}\\ROOT\\CIMV2:Win32_PageFileSetting.Name="C:\\\\pagefile.sys"${CRLF}Instance deletion successful.${CRLF}`,
    );
    return 0;
  }
  fail(1, `Node - ${name}${CRLF}ERROR:${CRLF}Description = Invalid query${CRLF}`);
};

const net: Handler = async (ctx) => {
  const [sub, user, opt] = ctx.argv.slice(1);
  if (sub?.toLowerCase() !== 'user' || user === undefined)
    fail(1, `The syntax of this command is:${CRLF}${CRLF}NET USER${CRLF}`);
  const g = guestOf(ctx);
  const known = [...g.users].find((u) => u.toLowerCase() === user.toLowerCase());
  if (known === undefined)
    fail(
      2,
      `The user name could not be found.${CRLF}${CRLF}More help is available by typing NET HELPMSG 2221.${CRLF}`,
    );
  if (opt?.toLowerCase() === '/delete') {
    g.users.delete(known);
  } else if (opt?.toLowerCase() === '/random') {
    const password = randomBytes(6).toString('base64').replace(/[+/]/g, 'x');
    await ctx.out(`Password for ${known} is: ${password}${CRLF}${CRLF}`);
  }
  await ctx.out(`The command completed successfully.${CRLF}${CRLF}`);
  return 0;
};

const netsh: Handler = async (ctx) => {
  const args = ctx.argv.slice(1).map((a) => a.toLowerCase());
  if (args[0] !== 'advfirewall' || args[1] !== 'firewall')
    fail(1, `The following command was not found: ${args.join(' ')}.`);
  if (args[2] === 'set') await ctx.out(`${CRLF}Updated 3 rule(s).${CRLF}Ok.${CRLF}${CRLF}`);
  else if (args[2] === 'add') await ctx.out(`Ok.${CRLF}${CRLF}`);
  else fail(1, `The following command was not found: ${args.join(' ')}.`);
  return 0;
};

const netdom: Handler = async (ctx) => {
  const [sub] = ctx.argv.slice(1);
  const g = guestOf(ctx);
  if (sub?.toLowerCase() !== 'remove') fail(87, 'The syntax of this command is incorrect.');
  if (!g.inDomain)
    fail(
      2,
      `The machine is not a member of a domain.${CRLF}The command failed to complete successfully.${CRLF}`,
    );
  g.inDomain = false;
  await ctx.out(
    `The computer needs to be restarted in order to complete the operation.${CRLF}${CRLF}The command completed successfully.${CRLF}`,
  );
  const reboot = ctx.argv.some((a) => /^\/reboot/i.test(a));
  // `/reboot:0` restarts right after the command answered.
  if (reboot) ctx.core.setTimer(() => computerOf(ctx).reboot(), 10);
  return 0;
};

const windowsShutdown: Handler = async (ctx) => {
  const args = ctx.argv.slice(1).map((a) => a.toLowerCase().replace(/^-/, '/'));
  const c = computerOf(ctx);
  // Windows' status 1115 reaches a Cygwin shell modulo 256.
  if (c.power === 'goingDown') fail(1115 & 0xff, `A system shutdown is in progress.(1115)${CRLF}`);
  if (args.includes('/a')) return 0;
  if (args.includes('/r')) return await goDown(ctx, 'reboot');
  if (args.includes('/s') || args.includes('/p')) return await goDown(ctx, 'off');
  fail(87, `The parameter is incorrect.(87)${CRLF}`);
};

const sysprep: Handler = async (ctx) => {
  const args = ctx.argv.slice(1).map((a) => a.toLowerCase());
  const mode = args.includes('/shutdown') ? 'off' : args.includes('/reboot') ? 'reboot' : 'quit';
  // Generalizing takes a while before the computer goes down (or sysprep quits).
  await ctx.sleep(ctx.core.options.sysprepMs);
  if (mode === 'quit') return 0;
  return await goDown(ctx, mode);
};

const say =
  (text: string): Handler =>
  async (ctx) => {
    await ctx.out(text);
    return 0;
  };

export const WINDOWS_COMMANDS: ReadonlyMap<string, Handler> = new Map<string, Handler>([
  ['wmic', wmic],
  ['net', net],
  ['netsh', netsh],
  ['netdom', netdom],
  ['logoff', ok],
  [
    'secedit',
    say(
      `${CRLF}The task has completed successfully.${CRLF}See log %windir%\\security\\logs\\scesrv.log for detail info.${CRLF}`,
    ),
  ],
  ['reg', say(`The operation completed successfully.${CRLF}${CRLF}`)],
  ['sc', say(`[SC] ChangeServiceConfig SUCCESS${CRLF}`)],
  ['powershell', ok],
  ['powercfg', ok],
  ['cleanmgr', ok],
  ['shutdown', windowsShutdown],
  ['shutdown.exe', windowsShutdown],
  ['sysprep.exe', sysprep],
  ['run-parts', runParts],
  [
    'hostname',
    async (ctx) => {
      await ctx.out(`${computerOf(ctx).name.toUpperCase()}${CRLF}`);
      return 0;
    },
  ],
]);
