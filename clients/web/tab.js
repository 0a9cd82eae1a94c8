// "This tab": the server's own graph for a model version (GET /v1/models/{version}/onnx) run by
// onnxruntime-web (vendored by `make setup`): WebGPU where the browser gives an adapter, else
// WebAssembly (SIMD, threads where the page is cross-origin isolated). The recurrent state
// (r1..r4) lives here, per stream, as the server's sessions keep it: passed into each run and
// replaced by its outputs; reset() starts afresh. The state belongs to one graph at one
// network resolution (ratio x frame size): another backend, model or ratio resets it.

const VENDOR = new URL("./vendor/onnxruntime-web/", import.meta.url).href;
// The WebGPU build runs the "wasm" provider too (its own WebAssembly build, asyncify).
const BUNDLES = { wasm: "ort.wasm.min.mjs", webgpu: "ort.webgpu.min.mjs" };
export const BACKENDS = ["webgpu", "wasm"];
const STATE_NAMES = ["r1", "r2", "r3", "r4"];
const FETCHES = ["pha", "r1o", "r2o", "r3o", "r4o"];
// x * float32(1/255), rounded to float32: bit for bit what the server's frames_to_batch does.
const INV255 = Math.fround(1 / 255);

// The backends this browser offers, best first, and why: WebGPU only with an adapter (a
// browser may have navigator.gpu and no usable GPU: headless, blocklisted drivers); `wanted`
// (`?backend=`) narrows the choice, falling back to WASM when WebGPU is not there.
export async function chooseBackends(wanted = null, gpu = globalThis.navigator?.gpu) {
  let webgpu = null;
  if (wanted !== "wasm") {
    if (!gpu) webgpu = "this browser has no WebGPU";
    else {
      try {
        webgpu = (await gpu.requestAdapter()) ? null : "WebGPU gives no adapter here";
      } catch (err) {
        webgpu = `WebGPU failed: ${err?.message || err}`;
      }
    }
  }
  if (wanted === "wasm") return { backends: ["wasm"], why: "WASM asked for (?backend=wasm)" };
  if (webgpu === null) {
    return wanted === "webgpu"
      ? { backends: ["webgpu"], why: "WebGPU asked for (?backend=webgpu)" }
      : { backends: ["webgpu", "wasm"], why: "WebGPU adapter found; WASM measured beside it" };
  }
  return { backends: ["wasm"], why: `${webgpu}: WASM` };
}

function zeroState(ort) {
  const zero = () => new ort.Tensor("float32", new Float32Array(1), [1, 1, 1, 1]);
  return STATE_NAMES.map(zero);
}

export class TabMatter {
  // The runtime for `backends` (the WebGPU build when WebGPU is among them).
  static async load(backends) {
    const ort = await import(VENDOR + (backends.includes("webgpu") ? BUNDLES.webgpu : BUNDLES.wasm));
    ort.env.wasm.wasmPaths = VENDOR;
    ort.env.wasm.numThreads = self.crossOriginIsolated
      ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
    return new TabMatter(ort);
  }

  constructor(ort) {
    this.ort = ort;
    this.sessions = new Map();   // "backend model graph" -> Promise<InferenceSession>
    this.state = zeroState(ort);
    this.stateKey = null;
    this.threads = ort.env.wasm.numThreads;
  }

  // The general graph runs any ratio; the one specialised for ratio 1 only that.
  static graphFor(ratio) { return ratio === 1 ? "full_resolution" : "general"; }

  // The session for a choice {backend, model, ratio}: fetched and created once.
  session({ backend, model, ratio }) {
    const graph = TabMatter.graphFor(ratio);
    const key = `${backend} ${model} ${graph}`;
    if (!this.sessions.has(key)) {
      const url = `/v1/models/${encodeURIComponent(model)}/onnx?graph=${graph}`;
      this.sessions.set(key, (async () => {
        const response = await fetch(url);
        if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${await response.text()}`);
        const bytes = new Uint8Array(await response.arrayBuffer());
        return this.ort.InferenceSession.create(bytes, {
          executionProviders: [backend], graphOptimizationLevel: "all",
        });
      })());
      this.sessions.get(key).catch(() => this.sessions.delete(key));
    }
    return this.sessions.get(key);
  }

  reset() { this.state = zeroState(this.ort); }

  // One frame: RGBA ImageData (width x height) -> Uint8Array alpha, width*height bytes, rounded
  // as the server rounds (x255, ties to even, clipped: what Uint8ClampedArray does).
  async matte(image, choice) {
    const { ort } = this;
    const session = await this.session(choice);
    const key = `${choice.backend} ${choice.model} ${choice.ratio}`;
    if (key !== this.stateKey) this.reset();
    this.stateKey = key;
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
      downsample_ratio: new ort.Tensor("float32", new Float32Array([choice.ratio]), [1]),
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
