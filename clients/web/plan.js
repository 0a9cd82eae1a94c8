// The tab's plan: which backend, graph (model version) and downsample ratio the tab mattes
// with, from what this device measured, never from a guess.
//
// Measuring: from the largest ratio down the ladder, every candidate (backend x model) mattes
// WARM_FRAMES untimed frames at the ratio (the first runs at a shape compile and allocate)
// and PROBE_FRAMES timed ones (their median counts);
// a frame's time is the whole loop (grab, matte, composite). The first ratio where the fastest
// candidate keeps up is the plan: its frame time within HEADROOM of the frame interval (room
// for the frames slower than the median; the paced loop makes up for a late frame with the
// early ones, up to one interval behind). A ratio whose time, predicted
// from the one above (RVM's backbone scales with the pixels: ratio squared; the refiner at full
// resolution only adds to it), is over SKIP_MARGIN times the budget is passed over unmeasured:
// it could not be chosen anyway. No ratio keeps up: "auto" hands over to the server; "tab"
// runs the fastest thing it measured, and says the device cannot reach the rate.
//
// Settled: the frames shown over the last BEHIND_MS are counted; falling below KEEP_UP of the
// rate measures the next ratio down (or, at the bottom, "auto" hands over to the server).

export const RATIOS = [1, 0.75, 0.5, 0.375, 0.25];
export const WARM_FRAMES = 2;
export const PROBE_FRAMES = 3;
export const HEADROOM = 0.85;
export const KEEP_UP = 0.9;
export const BEHIND_MS = 3000;
export const SKIP_MARGIN = 1.5;

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const same = (a, b) => a.backend === b.backend && a.model === b.model && a.ratio === b.ratio;

// The ladder for a run: the user's ratio alone, or RATIOS from the server's own choice for the
// frame size down (that choice first, when it is not on the ladder).
export function ratioLadder(userRatio, serverRatio) {
  if (userRatio) return [userRatio];
  return [serverRatio, ...RATIOS.filter((r) => r < serverRatio)];
}

export class TabPlan {
  // candidates: [{backend, model}] in order of preference (a tie goes to the first);
  // ratios: the ladder, largest first; target: frames per second; fallback: true in "auto".
  constructor({ candidates, ratios, target, fallback = false }) {
    if (!candidates.length || !ratios.length) throw new Error("nothing to measure");
    this.candidates = [...candidates];
    this.ratios = ratios;
    this.target = target;
    this.fallback = fallback;
    this.measured = [];     // {backend, model, ratio, ms, fps}: every figure this device gave
    this.failed = [];       // {backend, model, error}
    this.phase = "measuring";
    this.reason = "measuring this tab";
    this.level = 0;         // index into ratios
    this.probe = null;
    this.chosen = null;
    this.times = [];
    this.settledAt = null;
    this.exhausted = false;  // settled below the rate: nothing measured keeps up
    this.#startProbe(0);
  }

  get budgetMs() { return (HEADROOM * 1000) / this.target; }

  // What the next frame runs with: {backend, model, ratio}.
  current() {
    if (this.chosen) return this.chosen;
    const { queue, index } = this.probe;
    return { ...queue[index], ratio: this.ratios[this.level] };
  }

  // After a frame made with current(): its loop time; returns "tab" (go on) or "server".
  onFrame(ms, now) {
    return this.chosen ? this.#settled(now) : this.#measuring(ms);
  }

  // A candidate that cannot run here (its session or a run failed): dropped from the plan.
  onFailure(choice, error) {
    const { backend, model } = choice;
    this.failed.push({ backend, model, error: String(error?.message || error) });
    this.candidates = this.candidates.filter((c) => c.backend !== backend || c.model !== model);
    if (!this.candidates.length) {
      this.phase = "failed";
      this.reason = `this tab cannot matte: ${String(error?.message || error)}`;
      return "server";
    }
    if (this.chosen) { this.chosen = null; this.#startProbe(this.level); return "tab"; }
    this.probe.queue = this.probe.queue.filter((c) => c.backend !== backend || c.model !== model);
    if (this.probe.index >= this.probe.queue.length) return this.#levelDone();
    this.probe.frames = [];
    return "tab";
  }

  #startProbe(level) {
    this.level = level;
    this.chosen = null;
    this.phase = "measuring";
    this.probe = { queue: [...this.candidates], index: 0, frames: [] };
  }

  #measuring(ms) {
    const probe = this.probe;
    probe.frames.push(ms);
    if (probe.frames.length < WARM_FRAMES + PROBE_FRAMES) return "tab";
    const timed = probe.frames.slice(WARM_FRAMES);
    const row = { ...this.current(), ms: median(timed) };
    row.fps = 1000 / row.ms;
    this.measured = this.measured.filter((m) => !same(m, row)).concat([row]);
    probe.index += 1;
    probe.frames = [];
    if (probe.index < probe.queue.length) return "tab";
    return this.#levelDone();
  }

  #levelDone() {
    const ratio = this.ratios[this.level];
    const here = this.measured.filter((m) => m.ratio === ratio && this.#usable(m));
    const best = here.reduce((a, b) => (b.ms < a.ms ? b : a), here[0]);
    if (best && best.ms <= this.budgetMs) return this.#settle(best, "keeps up");
    for (let next = this.level + 1; next < this.ratios.length; next += 1) {
      const scale = (this.ratios[next] / ratio) ** 2;
      if (!best || best.ms * scale <= SKIP_MARGIN * this.budgetMs) {
        this.reason = `measuring ratio ${this.ratios[next]} (${best ? best.fps.toFixed(1) : "–"} fps at ${ratio})`;
        this.#startProbe(next);
        return "tab";
      }
    }
    const all = this.measured.filter((m) => this.#usable(m));
    const fastest = all.reduce((a, b) => (b.ms < a.ms ? b : a), all[0]);
    const fps = fastest ? fastest.fps.toFixed(1) : "–";
    if (this.fallback || !fastest) {
      this.phase = "server";
      this.reason = `this tab is too slow (${fps} fps at best < ${this.target})`;
      return "server";
    }
    this.#settle(fastest, `is the fastest measured; ${this.target} fps is out of reach here`);
    this.exhausted = true;
    return "tab";
  }

  #usable(m) { return this.candidates.some((c) => c.backend === m.backend && c.model === m.model); }

  #settle(row, why) {
    this.chosen = { backend: row.backend, model: row.model, ratio: row.ratio };
    this.exhausted = false;
    this.level = this.ratios.indexOf(row.ratio);
    this.phase = "settled";
    this.reason = `${row.model} on ${row.backend} at ratio ${row.ratio} ${why} (${row.fps.toFixed(1)} fps measured)`;
    this.times = [];
    this.settledAt = null;
    return "tab";
  }

  #settled(now) {
    if (this.settledAt === null) this.settledAt = now;
    this.times.push(now);
    while (this.times.length && now - this.times[0] > BEHIND_MS) this.times.shift();
    if (now - this.settledAt < BEHIND_MS) return "tab";
    const fps = (this.times.length * 1000) / BEHIND_MS;
    if (fps >= KEEP_UP * this.target || this.exhausted) return "tab";
    const behind = `the tab fell behind (${fps.toFixed(1)} fps < ${this.target})`;
    if (this.level + 1 < this.ratios.length) {
      this.reason = `${behind}: measuring ratio ${this.ratios[this.level + 1]}`;
      this.#startProbe(this.level + 1);
      return "tab";
    }
    this.reason = behind;
    if (this.fallback) { this.phase = "server"; return "server"; }
    this.settledAt = now;    // nothing lower to go to: keep going, and say so
    return "tab";
  }
}
