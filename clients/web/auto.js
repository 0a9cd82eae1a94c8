// "auto": the tab mattes when it sustains the chosen frame rate, else the server does.
// A warm-up measures the tab at the server's downsample ratio (its first frame, which compiles
// the graph, not counted); too slow there but within 4x, it measures once more at half that
// ratio (the tab may run a lower ratio than the server when that keeps it real time; the page
// shows it);
// too slow again, the server takes over. Once settled on the tab, falling below the rate over
// the last BEHIND_MS hands the stream to the server too.

export const WARMUP_MS = 2000;
export const BEHIND_MS = 3000;
export const KEEP_UP = 0.9;      // of the target rate: what "sustains" means here
export const MIN_RATIO = 0.25;

export class AutoPolicy {
  constructor(targetFps, ratio) {
    this.target = targetFps;
    this.ratio = ratio;
    this.lowered = false;
    this.warmup = { start: null, frames: 0 };
    this.settledAt = null;
    this.times = [];
    this.reason = "warming up in this tab";
  }

  // After each matte made in the tab: "tab" (go on, at this.ratio), or "server".
  onMatte(now) {
    if (this.warmup) return this.#warmingUp(now);
    this.times.push(now);
    while (this.times.length && now - this.times[0] > BEHIND_MS) this.times.shift();
    if (now - this.settledAt < BEHIND_MS) return "tab";
    const fps = (this.times.length * 1000) / BEHIND_MS;
    if (fps >= KEEP_UP * this.target) return "tab";
    this.reason = `the tab fell behind (${fps.toFixed(1)} fps < ${this.target})`;
    return "server";
  }

  #warmingUp(now) {
    const w = this.warmup;
    if (w.start === null) { w.start = now; return "tab"; }
    w.frames += 1;
    const elapsed = now - w.start;
    if (elapsed < WARMUP_MS) return "tab";
    const fps = (w.frames * 1000) / elapsed;
    if (fps >= KEEP_UP * this.target) {
      this.warmup = null;
      this.settledAt = now;
      this.reason = `this tab keeps up (${fps.toFixed(1)} fps at ratio ${this.ratio})`;
      return "tab";
    }
    // Half the ratio is a quarter of the pixels: at best 4x faster, so try it only when
    // that could reach the rate.
    if (!this.lowered && this.ratio / 2 >= MIN_RATIO && 4 * fps >= KEEP_UP * this.target) {
      this.lowered = true;
      this.ratio /= 2;
      this.warmup = { start: null, frames: 0 };
      this.reason = `this tab at ratio ${this.ratio} to keep up (${fps.toFixed(1)} fps before)`;
      return "tab";
    }
    this.reason = `this tab is too slow (${fps.toFixed(1)} fps < ${this.target})`;
    return "server";
  }
}
