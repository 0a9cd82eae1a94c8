// "This tab": the server's own graph for a model version (GET /v1/models/{version}/onnx) run by
// onnxruntime-web in WebAssembly (vendored by `make setup`; threads where the page is
// cross-origin isolated). The recurrent state (r1..r4) lives here, per stream, as the server's
// sessions keep it: passed into each run and replaced by its outputs; reset() starts afresh.
// The state's sizes follow the network's resolution (ratio x frame size): a new ratio resets it.

import * as ort from "./vendor/onnxruntime-web/ort.wasm.min.mjs";

const STATE_NAMES = ["r1", "r2", "r3", "r4"];
const FETCHES = ["pha", "r1o", "r2o", "r3o", "r4o"];
// x * float32(1/255), rounded to float32: bit for bit what the server's frames_to_batch does.
const INV255 = Math.fround(1 / 255);

ort.env.wasm.wasmPaths = new URL("./vendor/onnxruntime-web/", import.meta.url).href;
ort.env.wasm.numThreads = self.crossOriginIsolated
  ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;

function zeroState() {
  const zero = () => new ort.Tensor("float32", new Float32Array(1), [1, 1, 1, 1]);
  return STATE_NAMES.map(zero);
}

export class TabMatter {
  constructor(version) {
    this.version = version;
    this.sessions = new Map();   // graph name -> Promise<InferenceSession>
    this.state = zeroState();
    this.stateRatio = null;
    this.threads = ort.env.wasm.numThreads;
  }

  // The general graph runs any ratio; the one specialised for ratio 1 only that (same function,
  // so the state carries over when the ratio changes).
  static graphFor(ratio) { return ratio === 1 ? "full_resolution" : "general"; }

  session(ratio) {
    const graph = TabMatter.graphFor(ratio);
    if (!this.sessions.has(graph)) {
      const url = `/v1/models/${encodeURIComponent(this.version)}/onnx?graph=${graph}`;
      this.sessions.set(graph, (async () => {
        const response = await fetch(url);
        if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${await response.text()}`);
        const bytes = new Uint8Array(await response.arrayBuffer());
        return ort.InferenceSession.create(bytes, {
          executionProviders: ["wasm"], graphOptimizationLevel: "all",
        });
      })());
      this.sessions.get(graph).catch(() => this.sessions.delete(graph));
    }
    return this.sessions.get(graph);
  }

  reset() { this.state = zeroState(); }

  // One frame: RGBA ImageData (width x height) -> Uint8Array alpha, width*height bytes, rounded
  // as the server rounds (x255, ties to even, clipped: what Uint8ClampedArray does).
  async matte(image, ratio) {
    const session = await this.session(ratio);
    if (ratio !== this.stateRatio) this.reset();
    this.stateRatio = ratio;
    const { width, height, data } = image;
    const plane = width * height;
    const src = new Float32Array(3 * plane);
    for (let i = 0, j = 0; i < plane; i += 1, j += 4) {
      src[i] = data[j] * INV255;
      src[plane + i] = data[j + 1] * INV255;
      src[2 * plane + i] = data[j + 2] * INV255;
    }
    const feeds = {
      src: new ort.Tensor("float32", src, [1, 3, height, width]),
      downsample_ratio: new ort.Tensor("float32", new Float32Array([ratio]), [1]),
    };
    STATE_NAMES.forEach((name, k) => { feeds[`${name}i`] = this.state[k]; });
    const out = await session.run(feeds, FETCHES);
    this.state = STATE_NAMES.map((name) => out[`${name}o`]);
    const alpha = new Uint8ClampedArray(plane);
    const pha = out.pha.data;
    for (let i = 0; i < plane; i += 1) alpha[i] = pha[i] * 255;
    out.pha.dispose();
    return new Uint8Array(alpha.buffer);
  }
}
