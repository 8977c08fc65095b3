// What a view or a dialog starts, it owns: its timers and its listeners on long-lived
// targets (document, window) are registered on a Scope and all end with scope.dispose().
// Polling pauses while the tab is hidden and runs at once when it is shown again.

export class Scope {
  constructor() {
    this.controller = new AbortController();
    this.timers = new Set();
    this.children = new Set();
    this.parent = null;
  }

  get disposed() {
    return this.controller.signal.aborted;
  }

  /** addEventListener, removed again on dispose (an AbortSignal does it). */
  listen(target, type, handler, options = {}) {
    if (this.disposed) return;
    target.addEventListener(type, handler, { ...options, signal: this.controller.signal });
  }

  /** setTimeout that dispose() cancels. Returns the id for clear(). */
  later(ms, fn) {
    if (this.disposed) return null;
    const id = setTimeout(() => {
      this.timers.delete(id);
      fn();
    }, ms);
    this.timers.add(id);
    return id;
  }

  clear(id) {
    if (id === null || id === undefined) return;
    clearTimeout(id);
    this.timers.delete(id);
  }

  /** A scope that ends with this one (or earlier, by its own dispose). */
  child() {
    const scope = new Scope();
    if (this.disposed) {
      scope.dispose();
      return scope;
    }
    scope.parent = this;
    this.children.add(scope);
    return scope;
  }

  dispose() {
    if (this.disposed) return;
    for (const child of [...this.children]) child.dispose();
    for (const id of this.timers) clearTimeout(id);
    this.timers.clear();
    this.controller.abort();
    if (this.parent) this.parent.children.delete(this);
    this.parent = null;
  }
}

const hidden = () => document.visibilityState === "hidden";

/**
 * Run `load(isCurrent)` now and then every `periodMs` after it settles, only while the tab
 * is visible: hiding it cancels the next run, showing it runs one at once. `isCurrent()`
 * tells a slow answer whether a newer run started meanwhile (then it must not be applied).
 * `now()` runs one at once (after an action) and restarts the period; while the tab is
 * hidden it waits for the tab to be shown.
 */
export function poll(scope, load, periodMs) {
  let timer = null;
  let seq = 0;
  const run = async () => {
    scope.clear(timer);
    timer = null;
    if (scope.disposed || hidden()) return;
    const mine = ++seq;
    try {
      await load(() => mine === seq && !scope.disposed);
    } finally {
      if (mine === seq && !scope.disposed && !hidden()) timer = scope.later(periodMs, run);
    }
  };
  scope.listen(document, "visibilitychange", () => {
    if (!hidden()) {
      run();
      return;
    }
    scope.clear(timer); // an answer still in flight schedules nothing either (see run)
    timer = null;
  });
  return { now: run };
}
