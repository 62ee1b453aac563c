/**
 * Reads an inventory file (YAML or JSON) and validates it with the runner's schema. Errors name the file,
 * the line, the entry and the field, and say what is expected.
 */
import { readFileSync } from 'node:fs';
import { LineCounter, parseDocument } from 'yaml';
import { VclError } from '../errors.js';
import { type Inventory, inventorySchema, validatedInventory } from './schema.js';

export function loadInventoryFile(file: string): Inventory {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new VclError('INVALID_INVENTORY', `cannot read the inventory ${file}: ${(err as Error).message}`);
  }
  return parseInventoryText(text, file);
}

export function parseInventoryText(text: string, file = '(inventory)'): Inventory {
  const lines = new LineCounter();
  // Duplicate keys (two computers of one name) are errors, not a silent "last one wins".
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false });
  if (doc.errors.length > 0) {
    const problems = doc.errors.map((e) => {
      const at = e.linePos?.[0] ?? lines.linePos(e.pos[0]);
      return `${file}${at ? `:${at.line}:${at.col}` : ''}: ${e.message.split('\n')[0]}`;
    });
    throw new VclError(
      'INVALID_INVENTORY',
      `the inventory is not valid YAML/JSON:\n  ${problems.join('\n  ')}`,
      {
        details: { problems },
      },
    );
  }
  const parsed = inventorySchema.safeParse(doc.toJS());
  if (parsed.success) return validatedInventory(parsed.data);
  const problems = parsed.error.issues.map((issue) => {
    const path = issue.path.map(String);
    // The deepest node of the path that exists in the file gives the line.
    let node: unknown;
    for (let n = path.length; n >= 0 && !node; n--) node = doc.getIn(path.slice(0, n), true);
    const range = (node as { range?: [number, number, number] } | undefined)?.range;
    const pos = range ? lines.linePos(range[0]) : undefined;
    return `${file}${pos ? `:${pos.line}` : ''}: ${path.join('.') || '(root)'}: ${describeIssue(issue)}`;
  });
  throw new VclError('INVALID_INVENTORY', `the inventory is invalid:\n  ${problems.join('\n  ')}`, {
    details: { problems },
  });
}

/** zod reports a bad record key as "Invalid key in record"; say what a name may be. */
function describeIssue(issue: { code: string; message: string; issues?: { message: string }[] }): string {
  if (issue.code === 'invalid_key' && issue.issues?.length)
    return `invalid name: ${issue.issues.map((i) => i.message).join('; ')}`;
  return issue.message;
}
