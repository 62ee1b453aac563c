/** `vcl-capture lab`: the built-in lab, kept running, with an inventory file pointing at it. */
import { writeFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { startLab } from '../../lab/index.js';
import { EXIT } from '../exit-codes.js';

export async function labCommand(o: { writeInventory?: string }): Promise<number> {
  const lab = await startLab({ powerDelayMs: 200 });
  const yaml = `# Inventory of the vcl-capture built-in lab (valid while \`vcl-capture lab\` runs)\n${stringify(lab.inventory)}`;
  if (o.writeInventory) {
    writeFileSync(o.writeInventory, yaml, { mode: 0o600 });
    console.log(`Inventory written to ${o.writeInventory}`);
  } else {
    console.log(yaml);
  }
  console.log(`Computers: ${lab.computerNames().join(', ')}`);
  console.log(
    `Try: vcl-capture capture lv-linux-1 --image "Lab base" --config ${o.writeInventory ?? '<the inventory above>'}`,
  );
  console.log('Press Ctrl-C to stop the lab.');
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await lab.stop();
  return EXIT.OK;
}
