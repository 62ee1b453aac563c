#!/usr/bin/env node
/** The `vcl-capture` command. */
import { Command, InvalidArgumentError, Option } from 'commander';
import {
  allowedEndStates,
  END_STATES,
  type EndState,
  effectNames,
  OPERATING_SYSTEMS,
  type OsName,
  operatingSystems,
  PROVISIONERS,
  type ProvisionerName,
  provisioners,
} from '../../machines/index.js';
import { API_TOKEN_ENV, type ListenAddress, parseListen } from '../api/auth.js';
import { isVclError } from '../errors.js';
import { PACKAGE_VERSION } from '../package.js';
import { dryRun } from '../simulate/dry-run.js';
import { storeLabel } from '../store/open.js';
import { writeVisualizations } from '../visualize/write.js';
import { cancelCommand, captureCommand } from './commands/capture.js';
import { computersCommand, releaseCommand } from './commands/computers.js';
import { daemonCommand } from './commands/daemon.js';
import { demoCommand } from './commands/demo.js';
import { inspectCommand } from './commands/inspect.js';
import { labCommand } from './commands/lab.js';
import { notificationsCommand } from './commands/notifications.js';
import { preflightCommand } from './commands/preflight.js';
import { capturesCommand, imagesCommand, showCommand } from './commands/store-read.js';
import { EXIT, exitCodeForError } from './exit-codes.js';

const DEFAULT_DB = process.env.VCL_CAPTURE_DB ?? 'vcl-capture.sqlite';
/**
 * `--db`: the store, chosen by its form (src/store/open.ts). The help shows the default without a
 * password that `VCL_CAPTURE_DB` may hold.
 */
const dbOption = () =>
  new Option(
    '--db <file|url>',
    'the store: an SQLite file, or postgres://user@host/database (env VCL_CAPTURE_DB)',
  ).default(DEFAULT_DB, storeLabel(DEFAULT_DB));

const program = new Command()
  .name('vcl-capture')
  .description(
    'Capture disk images of lab computers (xCAT, VMware ESXi, libvirt/KVM, Proxmox VE) as XState machines',
  )
  .version(PACKAGE_VERSION)
  .option(
    '--log-level <level>',
    'fatal, error, warn, info, debug, trace or silent (default: warn, info with --log-file)',
  )
  .option('--log-file <file>', 'write JSON logs (pino) to this file')
  .showHelpAfterError()
  .exitOverride((err) => {
    // Usage errors are bad input (exit 2); --help and --version exit 0.
    process.exit(err.exitCode === 0 ? EXIT.OK : EXIT.BAD_INPUT);
  });

function globals(): { logLevel?: string; logFile?: string } {
  return program.opts();
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a non-negative integer');
  return n;
}

function portNumber(value: string): number {
  const n = positiveInt(value);
  if (n > 65535) throw new InvalidArgumentError('expected a TCP port (0 picks a free one)');
  return n;
}

function listenAddress(value: string): ListenAddress {
  try {
    return parseListen(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

const INSPECT_HELP =
  'serve the live inspector on 127.0.0.1 (default port 7780, 0: any free port) and print its URL';

program
  .command('demo')
  .description(
    'Start the built-in lab and capture one computer per provisioner at once (libvirt + Linux, VMware + Windows, xCAT + Linux, Proxmox VE + Linux)',
  )
  .option(
    '--db <file|url>',
    'store to keep the results in: an SQLite file or a postgres:// URL (default: a new SQLite file in a temp folder)',
  )
  .option('--json', 'print the summary as JSON')
  .option(
    '--inspect [port]',
    `${INSPECT_HELP}; the lab runs slower, and the page stays up until Ctrl-C`,
    portNumber,
  )
  .option(
    '--stately <ws-url>',
    'also send inspection events to a @statelyai/inspect WebSocket receiver (redacted)',
  )
  .addOption(
    new Option('--step-delay <ms>', 'lab power-off/boot delay (slows the demo down)')
      .argParser(positiveInt)
      .hideHelp(),
  )
  .addHelpText(
    'after',
    '\nExample:\n  vcl-capture demo && vcl-capture captures --db <the database it printed>\n  vcl-capture demo --inspect   # then open the URL it prints',
  )
  .action(async (opts) => {
    process.exitCode = await demoCommand({ ...globals(), ...opts });
  });

program
  .command('lab')
  .description('Start the built-in lab and keep it running, with an inventory that points at it')
  .option('-w, --write-inventory <file>', 'write the inventory (YAML) to this file')
  .addHelpText(
    'after',
    '\nExample:\n  vcl-capture lab -w lab.yaml   # then, in another terminal:\n  vcl-capture capture lv-linux-1 --image "Lab base" --config lab.yaml',
  )
  .action(async (opts) => {
    process.exitCode = await labCommand(opts);
  });

program
  .command('simulate')
  .description(
    'Dry-run captures through the machines with simulated effects (no host is touched): every provisioner x OS by default',
  )
  .addOption(new Option('-p, --provisioner <name>', 'only this provisioner').choices([...PROVISIONERS]))
  .addOption(new Option('-o, --os <name>', 'only this OS').choices([...OPERATING_SYSTEMS]))
  .addOption(
    new Option('-e, --end-state <state>', "end state (default: the provisioner's first)").choices([
      ...END_STATES,
    ]),
  )
  .option('--fail-at <effect>', 'make this effect fail, to watch the cleanup')
  .option('--step-ms <ms>', 'simulated duration of each effect', positiveInt, 15)
  .action(
    async (opts: {
      provisioner?: ProvisionerName;
      os?: OsName;
      endState?: EndState;
      failAt?: string;
      stepMs: number;
    }) => {
      const ps = opts.provisioner ? [opts.provisioner] : [...PROVISIONERS];
      const oses = opts.os ? [opts.os] : [...OPERATING_SYSTEMS];
      let failures = 0;
      for (const provisioner of ps) {
        if (opts.endState && !allowedEndStates(provisioner).includes(opts.endState)) {
          throw new InvalidArgumentError(
            `provisioner ${provisioner} cannot use end state ${opts.endState}; it allows ${allowedEndStates(provisioner).join(', ')}`,
          );
        }
        for (const os of oses) {
          if (opts.failAt) {
            const known = [
              ...effectNames(provisioners[provisioner].machine),
              ...effectNames(operatingSystems[os].machine),
            ];
            if (!known.includes(opts.failAt))
              throw new InvalidArgumentError(
                `--fail-at: ${provisioner}/${os} has no effect '${opts.failAt}'; effects: ${known.filter((k) => k !== 'os').join(', ')}`,
              );
          }
          console.log(`\n== ${provisioner} capture of a ${os} computer ==`);
          const result = await dryRun({
            provisioner,
            os,
            stepMs: opts.stepMs,
            ...(opts.endState ? { endState: opts.endState } : {}),
            ...(opts.failAt ? { failAt: opts.failAt } : {}),
            onEvent: (e) =>
              console.log(
                `${String(e.atMs).padStart(6)} ms  ${e.kind === 'state' ? `state  ${e.value}` : `effect ${e.name} ${e.outcome}`}`,
              ),
          });
          const detail =
            result.status === 'completed'
              ? `image ${result.image.name} at ${result.artifact.path}`
              : `${result.error.code} in ${result.error.step}: ${result.error.message}`;
          console.log(
            `=> ${result.status}: ${detail}${result.warnings.length ? ` (${result.warnings.length} warnings)` : ''}`,
          );
          if (result.status !== 'completed') failures += 1;
        }
      }
      if (failures && !opts.failAt) process.exitCode = 1;
    },
  );

program
  .command('capture')
  .description('Capture one computer from an inventory file')
  .argument('<computer>', 'computer name in the inventory')
  .requiredOption(
    '-i, --image <name>',
    'image (pretty) name: an existing image of that name gets a new revision',
  )
  .addOption(
    new Option('-e, --end-state <state>', "end state (default: the provisioner's first)").choices([
      ...END_STATES,
    ]),
  )
  .option('-c, --config <file>', 'inventory file (YAML or JSON)', 'inventory.yaml')
  .addOption(dbOption())
  .option('--owner <name>', 'owner of a new image', process.env.USER ?? 'vcl')
  .option('--json', 'print the result as JSON')
  .option(
    '-q, --queue',
    'record the capture as queued and return at once: a `vcl-capture daemon` on the same database runs it',
  )
  .option('--inspect [port]', INSPECT_HELP, portNumber)
  .option(
    '--stately <ws-url>',
    'also send inspection events to a @statelyai/inspect WebSocket receiver (redacted)',
  )
  .addHelpText(
    'after',
    `
Exit codes: 0 completed (or queued), 1 failed, 2 bad input, 3 cancelled, 4 host unreachable (network, auth, host key),
5 computer busy (held by another capture, or in maintenance: nothing recorded).
A failed capture sends the computer to maintenance only if it had touched it; see \`vcl-capture computers\`.
Example:
  vcl-capture capture vm-ubuntu-1 --image "Ubuntu 24.04 base" --config examples/inventory.yaml
  vcl-capture capture vm-ubuntu-1 --image "Ubuntu 24.04 base" --queue   # for the daemon`,
  )
  .action(async (computer: string, opts) => {
    process.exitCode = await captureCommand(computer, { ...globals(), ...opts });
  });

program
  .command('preflight')
  .description(
    'Check, without touching or reserving the computer, what a capture of it needs: hosts reachable with verified host keys, tools, the VM/domain/node and its disk, the target name, free space',
  )
  .argument('<computer>', 'computer name in the inventory')
  .option('-c, --config <file>', 'inventory file (YAML or JSON); without it, the built-in lab')
  .option(
    '--image-name <revision>',
    'also check that this image revision name (e.g. linux-Base12-v0) is free in the repository',
  )
  .option('--json', 'print the checks as JSON')
  .addHelpText(
    'after',
    `
Exit codes: 0 every check passed, 1 a check failed (the line says what to fix), 2 bad input,
4 a host unreachable or refusing us (network, authentication, host key).
Example:
  vcl-capture preflight vm-ubuntu-1 --config inventory.yaml
  vcl-capture preflight lv-linux-1 --json   # the built-in lab`,
  )
  .action(async (computer: string, opts) => {
    process.exitCode = await preflightCommand(computer, { ...globals(), ...opts });
  });

program
  .command('daemon')
  .description(
    'Resume the captures a previous run left unfinished, then run captures queued in the database, until SIGTERM',
  )
  .option('-c, --config <file>', 'inventory file (YAML or JSON)', 'inventory.yaml')
  .addOption(dbOption())
  .option(
    '--stop-timeout <ms>',
    'at SIGTERM, wait at most this long for running steps to reach their next state (default: no limit); steps still running then re-run on the next start',
    positiveInt,
  )
  .addOption(
    new Option('--lease <ms>', 'how long a capture stays claimed by this daemon without renewal')
      .argParser(positiveInt)
      .default(60_000),
  )
  .addOption(
    new Option('--queue-poll <ms>', 'how often to look for queued captures')
      .argParser(positiveInt)
      .default(1000),
  )
  .addOption(
    new Option('--poll-ms <ms>', 'interval of power and upload waits').argParser(positiveInt).hideHelp(),
  )
  .option('--inspect [port]', INSPECT_HELP, portNumber)
  .option(
    '--stately <ws-url>',
    'also send inspection events to a @statelyai/inspect WebSocket receiver (redacted)',
  )
  .option(
    '--listen <host:port>',
    'serve the HTTP API (OpenAPI at /openapi.json) and Prometheus /metrics, e.g. 127.0.0.1:7781; beyond loopback a bearer token is required',
    listenAddress,
  )
  .option(
    '--api-token-file <file>',
    `file holding the API's bearer token (first line; default: env ${API_TOKEN_ENV})`,
  )
  .addHelpText(
    'after',
    `
Logs (pino JSON, info level by default) go to stderr or --log-file. SIGTERM or SIGINT: take no new work,
let each running capture reach its next state (persisted), exit 0; a second signal exits at once (143).
Example:
  vcl-capture daemon --config inventory.yaml --db /var/lib/vcl-capture/captures.sqlite --inspect
  vcl-capture daemon --config inventory.yaml --db captures.sqlite --listen 127.0.0.1:7781
  curl http://127.0.0.1:7781/captures?status=running`,
  )
  .action(async (opts) => {
    process.exitCode = await daemonCommand({
      ...globals(),
      ...opts,
      leaseMs: opts.lease,
      queuePollMs: opts.queuePoll,
    });
  });

program
  .command('cancel')
  .description(
    'Cancel a capture: a queued one at once; a running one by asking the daemon that runs it (it cleans up)',
  )
  .argument('<capture-id>')
  .addOption(dbOption())
  .option('-r, --reason <text>', 'why (kept in the audit trail)', 'cancelled by the operator')
  .action(async (id: string, opts: { db: string; reason: string }) => {
    process.exitCode = await cancelCommand(id, { ...globals(), ...opts });
  });

program
  .command('inspect')
  .description(
    'Serve the inspector page for a store: recent captures, replay, running captures (loopback only)',
  )
  .option('-p, --port <port>', 'TCP port on 127.0.0.1 (0: any free port)', portNumber, 7780)
  .addOption(dbOption())
  .addHelpText(
    'after',
    '\nExample:\n  vcl-capture inspect --db captures.sqlite   # then open http://127.0.0.1:7780/',
  )
  .action(async (opts) => {
    process.exitCode = await inspectCommand(opts);
  });

program
  .command('images')
  .description('List images and their revisions')
  .addOption(dbOption())
  .option('--json', 'JSON output')
  .action(async (opts) => {
    process.exitCode = await imagesCommand(opts);
  });

program
  .command('captures')
  .description('List captures, newest first')
  .addOption(dbOption())
  .option('-s, --status <status...>', 'only these statuses (queued running completed failed cancelled)')
  .option('--computer <name>', 'only this computer')
  .option('--json', 'JSON output')
  .action(async (opts) => {
    process.exitCode = await capturesCommand(opts);
  });

program
  .command('show')
  .description('One capture and its audit trail')
  .argument('<capture-id>')
  .addOption(dbOption())
  .option('--json', 'JSON output')
  .action(async (id: string, opts) => {
    process.exitCode = await showCommand(id, opts);
  });

program
  .command('computers')
  .description(
    'List computers with their state; one in maintenance with the capture and error that put it there',
  )
  .addOption(dbOption())
  .option('--json', 'JSON output')
  .action(async (opts) => {
    process.exitCode = await computersCommand(opts);
  });

program
  .command('release')
  .description(
    'Put a computer back from maintenance after a look (to the state it was reserved from); recorded in the audit trail',
  )
  .argument('<computer>')
  .requiredOption('-r, --reason <text>', 'what was checked or fixed (kept in the audit trail)')
  .addOption(dbOption())
  .option('--json', 'JSON output')
  .addHelpText(
    'after',
    `
Refused (exit 5) while a capture holds the computer, and (exit 2) when it is not in maintenance.
Example:
  vcl-capture computers --db captures.sqlite
  vcl-capture release vm1 --reason "fixed the host key in the inventory" --db captures.sqlite`,
  )
  .action(async (computer: string, opts: { db: string; reason: string; json?: boolean }) => {
    process.exitCode = await releaseCommand(computer, { ...globals(), ...opts });
  });

program
  .command('notifications')
  .description(
    'List notification deliveries (webhooks, command hooks) with their attempts and last error; retry a dead one',
  )
  .addOption(
    new Option('--status <status...>', 'only these statuses').choices(['pending', 'delivered', 'dead']),
  )
  .option('--limit <n>', 'at most this many, newest first (default 100)', positiveInt)
  .option('--retry <delivery-id>', 'make a dead delivery pending again (the daemon attempts it)', positiveInt)
  .addOption(dbOption())
  .option('--json', 'JSON output')
  .addHelpText(
    'after',
    `
Receivers are configured in the inventory (notifications:); the daemon delivers. Example:
  vcl-capture notifications --status dead --db captures.sqlite
  vcl-capture notifications --retry 42 --db captures.sqlite`,
  )
  .action(async (opts) => {
    process.exitCode = await notificationsCommand(opts);
  });

program
  .command('machines')
  .description('List the capture machines: end states and the effects a runner must provide')
  .action(() => {
    for (const [name, { spec, machine }] of Object.entries(provisioners)) {
      console.log(`${name}: end states ${spec.endStates.join(', ')} (default ${spec.endStates[0]})`);
      console.log(`  effects: ${effectNames(machine).join(', ')}`);
    }
    for (const [name, { machine }] of Object.entries(operatingSystems)) {
      console.log(`${name} (OS sub-machine): effects ${effectNames(machine).join(', ')}`);
    }
  });

program
  .command('visualize')
  .description('Write the machine diagrams (Mermaid and SVG) to a directory')
  .argument('[dir]', 'output directory', 'visualizations')
  .action(async (dir: string) => {
    const written = await writeVisualizations(dir);
    console.log(`wrote ${written.length} files to ${dir}`);
  });

program.parseAsync().catch((err: unknown) => {
  console.error(`vcl-capture: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode =
    err instanceof InvalidArgumentError || err instanceof RangeError
      ? EXIT.BAD_INPUT
      : exitCodeForError(isVclError(err) ? err.code : undefined);
});
