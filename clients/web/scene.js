// Scene cuts: a new shot (or a new source) makes the recurrent state describe frames that are
// gone, so both modes start it afresh there (the tab zeroes its state, the server path sends
// {"type":"reset"}). A cut is a large mean change of a small grey thumbnail between frames;
// motion and lighting changes within a shot stay far below it.

const SIDE = 32;
const THRESHOLD = 40;   // mean |grey difference| out of 255 (a cut is typically 60+)

export class SceneCuts {
  constructor(threshold = THRESHOLD) {
    this.threshold = threshold;
    this.canvas = document.createElement("canvas");
    this.canvas.width = SIDE;
    this.canvas.height = SIDE;
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.previous = null;
  }

  forget() { this.previous = null; }

  // Whether `source` (a canvas, video or bitmap) starts a new scene. The first frame does not.
  isCut(source) {
    this.ctx.drawImage(source, 0, 0, SIDE, SIDE);
    const rgba = this.ctx.getImageData(0, 0, SIDE, SIDE).data;
    const grey = new Float32Array(SIDE * SIDE);
    for (let i = 0, j = 0; i < grey.length; i += 1, j += 4) {
      grey[i] = 0.299 * rgba[j] + 0.587 * rgba[j + 1] + 0.114 * rgba[j + 2];
    }
    const previous = this.previous;
    this.previous = grey;
    if (!previous) return false;
    let sum = 0;
    for (let i = 0; i < grey.length; i += 1) sum += Math.abs(grey[i] - previous[i]);
    return sum / grey.length > this.threshold;
  }
}
