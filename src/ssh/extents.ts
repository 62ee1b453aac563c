/**
 * Where a local file holds data, so that its holes need not be read: reading 3.75 GiB of holes back to hash
 * them cost more than the copy itself on this project's VM (bench:disk profile 1, docs/performance-copy.md).
 * Node has no `lseek`, so one `perl` process per file answers `SEEK_DATA`/`SEEK_HOLE` queries over a pipe
 * (perl is part of every Debian system: `perl-base` is Essential). Without perl, or on a file system that
 * does not know the calls, every range counts as data and is read, as before.
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

/**
 * Reads `<from> <to>` lines; answers each with the data extents `<start> <end>` inside it, then `end`.
 * 3 and 4 are Linux's SEEK_DATA and SEEK_HOLE (Fcntl does not export them). ENXIO from SEEK_DATA means
 * "no data after this": the rest is a hole. Any other error (EINVAL: not supported) reports the rest as
 * data.
 */
const EXTENTS_SCRIPT = `
use Errno qw(ENXIO);
open(my $f, "<", $ARGV[0]) or die "open $ARGV[0]: $!\\n";
$| = 1;
while (my $line = <STDIN>) {
  my ($a, $b) = split " ", $line;
  my $p = $a;
  while ($p < $b) {
    my $d = sysseek($f, $p, 3);
    if (!defined $d) { last if $! == ENXIO; print "$p $b\\n"; last }
    $d += 0;
    last if $d >= $b;
    my $h = sysseek($f, $d, 4);
    $h = defined $h ? $h + 0 : $b;
    $h = $b if $h > $b;
    print "$d $h\\n";
    $p = $h;
  }
  print "end\\n";
}
`;

export interface ExtentReader {
  /** The data extents inside `[from, to)`, in order; rejects when the helper is not available. */
  data(from: number, to: number): Promise<Array<[number, number]>>;
  close(): void;
}

/** A reader for `path` (which must exist); its queries are answered in order. */
export function startExtentReader(path: string): ExtentReader {
  let child: ChildProcessWithoutNullStreams | undefined;
  let broken: Error | undefined;
  const waiting: {
    extents: Array<[number, number]>;
    resolve: (e: Array<[number, number]>) => void;
    reject: (e: Error) => void;
  }[] = [];

  const fail = (err: Error) => {
    broken ??= err;
    for (const w of waiting.splice(0)) w.reject(broken);
  };
  const start = (): ChildProcessWithoutNullStreams => {
    const c = spawn('perl', ['-e', EXTENTS_SCRIPT, path], { stdio: ['pipe', 'pipe', 'pipe'] });
    c.on('error', (err) => fail(err));
    c.on('exit', (code, signal) => fail(new Error(`perl exited (${code ?? signal})`)));
    c.stdin.on('error', () => {});
    c.stderr.resume();
    createInterface({ input: c.stdout }).on('line', (line) => {
      const w = waiting[0];
      if (w === undefined) return;
      if (line === 'end') {
        waiting.shift();
        w.resolve(w.extents);
        return;
      }
      const m = /^(\d+) (\d+)$/.exec(line);
      if (m === null) return fail(new Error(`unexpected extent line ${JSON.stringify(line)}`));
      w.extents.push([Number(m[1]), Number(m[2])]);
    });
    return c;
  };

  return {
    data(from, to) {
      if (broken !== undefined) return Promise.reject(broken);
      child ??= start();
      const c = child;
      return new Promise((resolve, reject) => {
        waiting.push({ extents: [], resolve, reject });
        c.stdin.write(`${from} ${to}\n`);
      });
    },
    close() {
      broken ??= new Error('closed');
      child?.stdin.end();
      child?.kill();
    },
  };
}
