/**
 * How the lab reads a command line: POSIX shell word rules (single quotes, double quotes, backslash) and
 * nothing else. The lab never runs a shell, so any syntax a shell would interpret (an unquoted `;`, `|`,
 * `$`, a glob, a redirection...) is refused rather than guessed at: a value that reaches the lab as one
 * argv word was quoted correctly, and one that did not is visible in the command log as a refusal.
 *
 * The two shell fragments the SSH transport itself sends (src/ssh/process.ts) are recognised by their
 * exact text: the `echo VCLPID=$$; exec ` prefix that reports the process group, and the kill script.
 */

/** Prefix of every command line the transport sends (src/ssh/process.ts): report the PID, then exec. */
export const TRANSPORT_PREFIX = 'echo VCLPID=$$; exec ';

/**
 * The same prefix with a runner execution's tag (src/ssh/process.ts `commandLineOf`): the PID, then the
 * tag exported, then exec.
 */
const TAGGED_PREFIX = /^echo VCLPID=\$\$; export VCL_CAPTURE_TAG=([0-9a-f]{16}); exec /;

/** The transport's remote kill (src/ssh/process.ts), with the process group in place of `N`. */
const KILL_SCRIPT =
  /^kill -KILL -- -(\d+) 2>\/dev\/null \|\| kill -KILL \1 2>\/dev\/null \|\| ! kill -0 -- -\1 2>\/dev\/null$/;

export type ParsedLine =
  /** A plain command; `wrapped` when it came inside the transport's PID prefix, with its `tag` if any. */
  | { kind: 'argv'; argv: string[]; wrapped: boolean; tag?: string }
  /** The transport's kill script for process group `group`. */
  | { kind: 'kill'; group: number }
  /** Shell syntax the lab does not interpret; answered with exit 2 and `message` on stderr. */
  | { kind: 'refused'; message: string };

/** Characters a shell interprets when they appear unquoted anywhere in a word. */
const META = new Set([';', '|', '&', '$', '`', '<', '>', '(', ')', '\n']);
/** Characters that would make a shell expand a glob. */
const GLOB = new Set(['*', '?', '[']);

/** A line split into the transport's prefix (tagged or not) and the command after it. */
function unwrap(line: string): { text: string; wrapped: boolean; tag?: string } {
  const tagged = TAGGED_PREFIX.exec(line);
  if (tagged) return { text: line.slice(tagged[0].length), wrapped: true, tag: tagged[1] as string };
  const wrapped = line.startsWith(TRANSPORT_PREFIX);
  return { text: wrapped ? line.slice(TRANSPORT_PREFIX.length) : line, wrapped };
}

/** The command a line runs, without the transport's prefix (tagged or not); other lines as they are. */
export function commandText(line: string): string {
  return unwrap(line).text;
}

export function parseCommandLine(line: string): ParsedLine {
  const kill = KILL_SCRIPT.exec(line);
  if (kill) return { kind: 'kill', group: Number(kill[1]) };
  const { text, wrapped, tag } = unwrap(line);
  const words = splitWords(text);
  if ('error' in words) return { kind: 'refused', message: words.error };
  return { kind: 'argv', argv: words.argv, wrapped, ...(tag === undefined ? {} : { tag }) };
}

function refuse(what: string): { error: string } {
  return { error: `sh: 1: lab: refusing ${what} (the lab interprets no shell syntax)` };
}

function describeChar(c: string): string {
  return c === '\n' ? 'an unquoted newline' : `an unquoted '${c}'`;
}

/** Splits a line into words the way a POSIX shell would, refusing anything it would expand. */
export function splitWords(line: string): { argv: string[] } | { error: string } {
  const argv: string[] = [];
  let cur = '';
  let inWord = false;
  let i = 0;
  while (i < line.length) {
    const c = line[i] as string;
    if (c === ' ' || c === '\t') {
      if (inWord) argv.push(cur);
      cur = '';
      inWord = false;
      i++;
      continue;
    }
    if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) return { error: 'sh: 1: Syntax error: Unterminated quoted string' };
      cur += line.slice(i + 1, end);
      inWord = true;
      i = end + 1;
      continue;
    }
    if (c === '"') {
      let j = i + 1;
      for (;;) {
        if (j >= line.length) return { error: 'sh: 1: Syntax error: Unterminated quoted string' };
        const d = line[j] as string;
        if (d === '"') break;
        if (d === '\\') {
          const next = line[j + 1];
          // Inside double quotes a backslash escapes only these; elsewhere it is literal.
          if (next === '$' || next === '`' || next === '"' || next === '\\') {
            cur += next;
            j += 2;
          } else if (next === '\n') {
            j += 2;
          } else {
            cur += '\\';
            j++;
          }
          continue;
        }
        if (d === '$' || d === '`') return refuse(`'${d}' inside double quotes`);
        cur += d;
        j++;
      }
      inWord = true;
      i = j + 1;
      continue;
    }
    if (c === '\\') {
      const next = line[i + 1];
      if (next === undefined) {
        cur += '\\';
        inWord = true;
        i++;
      } else if (next === '\n') {
        // Line continuation: both characters vanish.
        i += 2;
      } else {
        cur += next;
        inWord = true;
        i += 2;
      }
      continue;
    }
    if (META.has(c)) return refuse(describeChar(c));
    if (GLOB.has(c)) return refuse(`${describeChar(c)} (a glob)`);
    if (!inWord && (c === '#' || c === '~')) return refuse(`${describeChar(c)} at the start of a word`);
    cur += c;
    inWord = true;
    i++;
  }
  if (inWord) argv.push(cur);
  return { argv };
}
