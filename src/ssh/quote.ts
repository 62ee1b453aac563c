import { VclError } from '../errors.js';

/**
 * Quoting for POSIX shells (sh, dash, bash, busybox ash, Cygwin's bash): the ONE function through which
 * every word that reaches a remote shell must pass.
 *
 * The rule is the simplest one that is correct in every POSIX shell: wrap the word in single quotes, inside
 * which no character is special (not `$`, backquote, backslash, `!` in a non-interactive shell, newline,
 * nor any byte of a UTF-8 sequence), and write each single quote of the word as `'\''` (close the quoted
 * part, an escaped quote, reopen). Words made only of characters that are never special are left bare so
 * that logged command lines stay readable. NUL cannot be passed to a program as part of an argument at
 * all, so it is refused instead of being silently truncated by the remote side.
 */

/**
 * Characters that need no quoting in any POSIX shell, wherever they sit in a word. `=` is not among them: a
 * bare `A=b` as the first word would be an assignment, not a command name.
 */
const SAFE_WORD = /^[A-Za-z0-9_@%+:,./-]+$/;

/** Quotes one word for a POSIX shell. Throws `VclError('SHELL_QUOTE_NUL')` when it contains a NUL byte. */
export function shellQuote(arg: string): string {
  if (typeof arg !== 'string') {
    throw new VclError('SHELL_QUOTE_INVALID', `shellQuote expects a string, got ${typeof arg}`);
  }
  if (arg.includes('\0')) {
    throw new VclError(
      'SHELL_QUOTE_NUL',
      'a command argument contains a NUL byte, which no program can receive',
      {
        details: { argument: arg.replaceAll('\0', '\\0').slice(0, 200) },
      },
    );
  }
  if (SAFE_WORD.test(arg)) return arg;
  return `'${arg.replaceAll("'", "'\\''")}'`;
}

/** Joins an argument vector into one command line for a POSIX shell, quoting every word. */
export function toCommandLine(argv: readonly string[]): string {
  if (argv.length === 0)
    throw new VclError('SHELL_QUOTE_INVALID', 'an empty argument vector is not a command');
  return argv.map(shellQuote).join(' ');
}
