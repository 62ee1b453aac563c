/** `images`, `captures`, `show`: read the store. */
import { openStore, storeLabel } from '../../store/index.js';
import type { CaptureRecordStatus } from '../../store/types.js';
import { EXIT } from '../exit-codes.js';

export function table(rows: Record<string, unknown>[]): string {
  if (rows.length === 0) return '(none)';
  const cols = Object.keys(rows[0] as object);
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(width[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [
    line(cols),
    line(width.map((w) => '-'.repeat(w))),
    ...rows.map((r) => line(cols.map((c) => String(r[c] ?? '')))),
  ].join('\n');
}

export async function imagesCommand(o: { db: string; json?: boolean }): Promise<number> {
  const store = await openStore(o.db);
  try {
    const images = await store.listImages();
    if (o.json) console.log(JSON.stringify(images, null, 2));
    else
      console.log(
        table(
          images.flatMap((i) =>
            i.revisions.map((r) => ({
              image: i.id,
              revision: r.revision,
              name: r.name,
              size: r.sizeBytes ?? '',
              sha256: r.sha256 ? `${r.sha256.slice(0, 16)}…` : '',
              deleted: r.deleted ? 'yes' : '',
              production: r.production ? 'yes' : '',
            })),
          ),
        ),
      );
    return EXIT.OK;
  } finally {
    await store.close();
  }
}

export async function capturesCommand(o: {
  db: string;
  status?: string[];
  computer?: string;
  json?: boolean;
}): Promise<number> {
  const store = await openStore(o.db);
  try {
    const captures = await store.listCaptures({
      ...(o.status ? { status: o.status as CaptureRecordStatus[] } : {}),
      ...(o.computer ? { computer: o.computer } : {}),
    });
    if (o.json) console.log(JSON.stringify(captures, null, 2));
    else
      console.log(
        table(
          captures.map((c) => ({
            id: c.id,
            computer: c.computer,
            image: c.image.name,
            provisioner: c.provisioner,
            status: c.status,
            error: c.lastError ? `${c.lastError.code} in ${c.lastError.step}` : '',
            updated: c.updatedAt,
          })),
        ),
      );
    return EXIT.OK;
  } finally {
    await store.close();
  }
}

export async function showCommand(id: string, o: { db: string; json?: boolean }): Promise<number> {
  const store = await openStore(o.db);
  try {
    const capture = await store.getCapture(id);
    if (!capture) {
      console.error(
        `vcl-capture: no capture ${id} in ${storeLabel(o.db)} (list them with: vcl-capture captures)`,
      );
      return EXIT.BAD_INPUT;
    }
    if (o.json) {
      console.log(JSON.stringify(capture, null, 2));
      return EXIT.OK;
    }
    console.log(
      `capture ${capture.id}: ${capture.computer} -> ${capture.image.name} (${capture.provisioner}, ${capture.os}, end state ${capture.endState})`,
    );
    console.log(
      `status ${capture.status}${capture.lastError ? `, last error ${capture.lastError.code} in ${capture.lastError.step}: ${capture.lastError.message}` : ''}\n`,
    );
    console.log(
      table(
        capture.events.map((e) => ({
          seq: e.seq,
          at: e.at,
          type: e.type,
          step: e.step ?? '',
          duration: e.durationMs === null || e.durationMs === undefined ? '' : `${e.durationMs} ms`,
        })),
      ),
    );
    return EXIT.OK;
  } finally {
    await store.close();
  }
}
