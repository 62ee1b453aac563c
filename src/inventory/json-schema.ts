/** The inventory's JSON Schema, generated from the zod schema, for editors (`examples/inventory.schema.json`). */
import { z } from 'zod';
import { inventorySchema } from './schema.js';

export function inventoryJsonSchema(): string {
  const schema = z.toJSONSchema(inventorySchema, { io: 'input', unrepresentable: 'any' });
  return `${JSON.stringify({ ...schema, title: 'vcl-capture inventory' }, null, 2)}\n`;
}
