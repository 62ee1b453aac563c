/**
 * xCAT's capture environment: what an xCAT node runs when it boots after `nodeset <node>
 * osimage=<capture image>`. It uploads the node's disk to `<repository>/<profile>.img` in chunks (the file
 * grows on the repository host while `nodestat` says `capturing`), then writes the
 * `<profile>.img.capturedone` marker, or `.capturefailed` when a write fails (a full repository, the
 * `captureFails` fault), and halts the node. Powering the node off stops the upload where it is.
 */
import { open, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ComputerRecord, LabCore } from './core.js';
import { NoSpaceError } from './core.js';
import { isZero } from './fs.js';

export function startCaptureEnv(core: LabCore, rec: ComputerRecord): void {
  rec.stopCapture?.();
  const ac = new AbortController();
  const stopOnStop = () => ac.abort();
  core.stopping.addEventListener('abort', stopOnStop, { once: true });
  const onPower = () => {
    if (rec.computer.power !== 'on' || rec.computer.running !== 'captureEnv') ac.abort();
  };
  rec.computer.on('power', onPower);
  const stop = () => ac.abort();
  rec.stopCapture = stop;
  const work = upload(core, rec, ac.signal)
    .catch((err: unknown) => {
      if (!ac.signal.aborted) core.internalErrors.push(err as Error);
    })
    .finally(() => {
      rec.computer.off('power', onPower);
      core.stopping.removeEventListener('abort', stopOnStop);
      if (rec.stopCapture === stop) rec.stopCapture = undefined;
    });
  core.track(work);
}

async function upload(core: LabCore, rec: ComputerRecord, signal: AbortSignal): Promise<void> {
  const repoHost = core.hosts.get(rec.repository.host);
  if (repoHost === undefined) throw new Error(`no repository host ${rec.repository.host}`);
  const image = `${rec.repository.path}/${rec.profile}.img`;
  const target = await repoHost.fs.prepare(image);
  const source = await rec.ensureDisk();
  const failure = core.faults.take('captureFails', (f) => f.computer === rec.info.name);
  const failAt = failure === undefined ? undefined : (failure.afterBytes ?? 0);
  const chunkBytes = core.options.captureChunkBytes;
  let outcome: 'done' | string = 'done';
  const input = await open(source, 'r');
  try {
    const output = await open(target.real, 'w', 0o600);
    try {
      const { size } = await input.stat();
      const buf = Buffer.alloc(Math.min(chunkBytes, Math.max(1, size)));
      let at = 0;
      while (at < size) {
        await sleep(core.options.captureChunkMs, undefined, { signal });
        if (failAt !== undefined && at >= failAt) {
          outcome = 'the capture environment reported an error (injected captureFails fault)';
          break;
        }
        const { bytesRead } = await input.read(buf, 0, Math.min(buf.length, size - at), at);
        if (bytesRead === 0) break;
        const chunk = buf.subarray(0, bytesRead);
        try {
          if (!isZero(chunk)) {
            core.checkWrite(repoHost.name, bytesRead);
            await output.write(chunk, 0, bytesRead, at);
          }
        } catch (err) {
          if (!(err instanceof NoSpaceError)) throw err;
          outcome = `write error: No space left on device at byte ${at}`;
          break;
        }
        at += bytesRead;
        await output.truncate(at);
      }
    } finally {
      await output.close();
    }
  } finally {
    await input.close();
  }
  signal.throwIfAborted();
  const marker = outcome === 'done' ? `${target.real}.capturedone` : `${target.real}.capturefailed`;
  await writeFile(marker, outcome === 'done' ? '' : `${outcome}\n`);
  // The capture environment halts the node when it is done, whatever the outcome.
  core.setTimer(() => rec.computer.shutdown(true), core.options.powerDelayMs);
}
