/** How the lab reads command lines: POSIX words, refusals, and the transport's own shell fragments. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { HAS_TOOL_SCRIPT } from '../../src/drivers/preflight-commands.js';
import {
  COPY_FINALIZE_SCRIPT,
  COPY_READ_SCRIPT,
  COPY_WRITE_SCRIPT,
  TRANSPORT_PREFIX,
  ZSTD_READ_SCRIPT,
  ZSTD_WRITE_SCRIPT,
} from '../../src/lab/index.js';
import { parseCommandLine, splitWords } from '../../src/lab/words.js';
import { toCommandLine } from '../../src/ssh/index.js';
import { commandLineOf } from '../../src/ssh/process.js';
import { ZSTD_PROBE, HAS_TOOL_SCRIPT as ZSTD_PROBE_SCRIPT } from '../../src/ssh/zstd-plan.js';

const HOSTILE = [
  'a;b',
  '$(touch /tmp/pwned)',
  '`id`',
  "it's",
  'say "hi"',
  'two words',
  'line\nbreak',
  'back\\slash',
  '*.img',
  '~root',
  '#comment',
  '',
  ' ',
  '|&<>()',
  '$HOME',
  "'",
  '"',
];

describe('splitWords', () => {
  it('reads single quotes, double quotes and backslashes as a POSIX shell does', () => {
    expect(splitWords(`a 'b c' "d e" f\\ g "h\\"i" 'j'"k"l`)).toEqual({
      argv: ['a', 'b c', 'd e', 'f g', 'h"i', 'jkl'],
    });
    expect(splitWords(`"\\$x \\\\ \\a"`)).toEqual({ argv: ['$x \\ \\a'] });
    expect(splitWords("''")).toEqual({ argv: [''] });
    expect(splitWords('  spaced\tout  ')).toEqual({ argv: ['spaced', 'out'] });
    expect(splitWords('con\\\ntinued')).toEqual({ argv: ['continued'] });
  });

  it('gets back every word the transport quoted, hostile ones included', () => {
    for (const word of HOSTILE) {
      expect(splitWords(toCommandLine(['echo', word]))).toEqual({ argv: ['echo', word] });
    }
    expect(splitWords(toCommandLine(HOSTILE))).toEqual({ argv: HOSTILE });
  });

  it('refuses what a shell would interpret, instead of interpreting it', () => {
    for (const line of [
      'ls; rm -rf /',
      'a | b',
      'a & b',
      'a && b',
      'echo $HOME',
      'echo `id`',
      'echo $(id)',
      'cat < /etc/passwd',
      'echo x > f',
      '(sub)',
      'a\nb',
      'ls *.img',
      'ls ?',
      'ls [ab]',
      'cd ~',
      'ls # comment',
      'echo "$HOME"',
      'echo "`id`"',
    ]) {
      const r = splitWords(line);
      expect(r, line).toHaveProperty('error');
    }
    expect(splitWords("echo 'open")).toEqual({ error: 'sh: 1: Syntax error: Unterminated quoted string' });
    expect(splitWords('echo "open')).toEqual({ error: 'sh: 1: Syntax error: Unterminated quoted string' });
  });
});

describe('parseCommandLine', () => {
  it('strips the transport PID prefix and parses the rest', () => {
    const line = `echo VCLPID=$$; exec ${toCommandLine(['virsh', 'domstate', 'vm 1;x', '--reason'])}`;
    expect(parseCommandLine(line)).toEqual({
      kind: 'argv',
      argv: ['virsh', 'domstate', 'vm 1;x', '--reason'],
      wrapped: true,
    });
    expect(parseCommandLine('uname -r')).toEqual({ kind: 'argv', argv: ['uname', '-r'], wrapped: false });
    // The prefix is only itself: the same words elsewhere are shell syntax.
    expect(parseCommandLine('echo VCLPID=$$ ; exec id')).toHaveProperty('kind', 'refused');
  });

  it('reads the tag of a tagged command line exactly as the transport writes it', () => {
    const argv = ['qemu-img', 'convert', 'a b', "c'd"];
    expect(parseCommandLine(commandLineOf(argv, '0123456789abcdef'))).toEqual({
      kind: 'argv',
      argv,
      wrapped: true,
      tag: '0123456789abcdef',
    });
    // The transport refuses a tag that is not 16 hex digits; the lab reads any other form as shell syntax.
    expect(() => commandLineOf(argv, '0123;id')).toThrow(/not a remote command tag/);
    expect(
      parseCommandLine(`echo VCLPID=$$; export VCL_CAPTURE_TAG=0123; exec ${toCommandLine(argv)}`),
    ).toHaveProperty('kind', 'refused');
  });

  it('recognises the transport kill script and nothing like it', () => {
    const kill =
      'kill -KILL -- -4242 2>/dev/null || kill -KILL 4242 2>/dev/null || ! kill -0 -- -4242 2>/dev/null';
    expect(parseCommandLine(kill)).toEqual({ kind: 'kill', group: 4242 });
    expect(parseCommandLine(kill.replace('|| kill -KILL 4242', '|| kill -KILL 4243'))).toHaveProperty(
      'kind',
      'refused',
    );
    expect(parseCommandLine(`${kill}; rm -rf /`)).toHaveProperty('kind', 'refused');
  });
});

describe('the transport scripts the lab emulates', () => {
  // If the transport changes its scripts, the lab must change with it: these would fail first.
  it('are the ones src/ssh sends', () => {
    const process = readFileSync(new URL('../../src/ssh/process.ts', import.meta.url), 'utf8');
    expect(process).toContain(`\`${TRANSPORT_PREFIX}\${toCommandLine(argv)}\``);
    const g = '$' + '{group}';
    expect(process).toContain(`\`kill -KILL -- -${g} 2>/dev/null || kill -KILL ${g} 2>/dev/null || \``);
    expect(process).toContain(`\`! kill -0 -- -${g} 2>/dev/null\``);
    const copy = readFileSync(new URL('../../src/ssh/copy.ts', import.meta.url), 'utf8').replace(
      /'\s*\+\s*\n\s*'/g,
      '',
    );
    expect(copy).toContain(`'${COPY_READ_SCRIPT}'`);
    expect(copy).toContain(`'${COPY_WRITE_SCRIPT}'`);
    expect(copy).toContain(`'${COPY_FINALIZE_SCRIPT}'`);
    const zstd = readFileSync(new URL('../../src/ssh/zstd.ts', import.meta.url), 'utf8');
    expect(zstd).toContain(`'${ZSTD_READ_SCRIPT}'`);
    expect(zstd).toContain(`'${ZSTD_WRITE_SCRIPT}'`);
    // The pool's zstd probe is the preflight's tool probe, which the lab answers with `command -v`.
    expect(ZSTD_PROBE_SCRIPT).toBe(HAS_TOOL_SCRIPT);
    expect(ZSTD_PROBE).toEqual(['sh', '-c', HAS_TOOL_SCRIPT, 'sh', 'zstd']);
  });
});
