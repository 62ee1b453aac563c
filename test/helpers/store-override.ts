/**
 * Fault injection on a store: the real store (SQLite or PostgreSQL) with some of its methods replaced,
 * every other one its own, bound to it.
 */
export function overriding<S extends object>(store: S, replaced: Partial<S>): S {
  return new Proxy(store, {
    get(target, key) {
      if (Object.hasOwn(replaced, key)) return replaced[key as keyof S];
      const value: unknown = Reflect.get(target, key, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}
