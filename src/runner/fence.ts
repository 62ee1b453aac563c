/**
 * One execution's view of the store: every write it makes for its capture names the claim it runs the
 * capture under (owner and generation), so once another runner has claimed the capture (this one was cut
 * off and its lease ran out) the store refuses the write with `FENCED` and changes nothing. The first
 * refusal tells the execution, which then drops the capture without touching it further.
 */
import { isVclError, type VclError } from '../errors.js';
import { type CaptureFence, type CaptureStore, STORE_ERROR_CODES } from '../store/index.js';

/** The writes a runner makes for the capture it runs, each given the fence. */
type FencedWrites = Pick<
  CaptureStore,
  | 'reserveComputer'
  | 'recordTransition'
  | 'completeCapture'
  | 'failCapture'
  | 'cancelCapture'
  | 'recordRemoteTag'
  | 'forgetRemoteTags'
  | 'acquireHostSlot'
>;

export function fencedStore(
  store: CaptureStore,
  captureId: string,
  fence: CaptureFence,
  onFenced: (err: VclError) => void,
): CaptureStore {
  const watch = <T>(p: Promise<T>): Promise<T> =>
    p.catch((err: unknown) => {
      if (isVclError(err) && err.code === STORE_ERROR_CODES.FENCED) onFenced(err);
      throw err;
    });
  // Another capture's writes (none expected from one execution) go through unfenced.
  const mine = (id: string) => id === captureId;
  const writes: FencedWrites = {
    reserveComputer: (id, o) => watch(store.reserveComputer(id, mine(id) ? { ...o, fence } : o)),
    recordTransition: (id, t) => watch(store.recordTransition(id, mine(id) ? { ...t, fence } : t)),
    completeCapture: (id, a, o = {}) => watch(store.completeCapture(id, a, mine(id) ? { ...o, fence } : o)),
    failCapture: (id, e, out, o = {}) => watch(store.failCapture(id, e, out, mine(id) ? { ...o, fence } : o)),
    cancelCapture: (id, e, out, o = {}) =>
      watch(store.cancelCapture(id, e, out, mine(id) ? { ...o, fence } : o)),
    recordRemoteTag: (id, host, tag, o) =>
      watch(store.recordRemoteTag(id, host, tag, mine(id) ? { ...o, fence } : o)),
    forgetRemoteTags: (id, only, o) =>
      watch(store.forgetRemoteTags(id, only, mine(id) ? { ...o, fence } : o)),
    acquireHostSlot: (id, slot, f) => watch(store.acquireHostSlot(id, slot, mine(id) ? fence : f)),
  };
  return new Proxy(store, {
    get(target, key) {
      if (Object.hasOwn(writes, key)) return writes[key as keyof FencedWrites];
      const value: unknown = Reflect.get(target, key, target);
      // The store's own methods run against the store, not the proxy.
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}
