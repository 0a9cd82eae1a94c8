// A tab-mode recording (`?record=N`: the first N frames as the tab matted them) in a form a
// test can read: base64 RGB (W*H*3) and alpha (W*H) planes per frame, with the frame's reset
// flag (a scene cut zeroed the state first), downsample ratio, model and backend.

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function rgbOf(rgba) {
  const rgb = new Uint8Array((rgba.length / 4) * 3);
  for (let i = 0, j = 0; j < rgba.length; i += 3, j += 4) {
    rgb[i] = rgba[j]; rgb[i + 1] = rgba[j + 1]; rgb[i + 2] = rgba[j + 2];
  }
  return rgb;
}

export function exportRecording(recording) {
  if (!recording) return null;
  return {
    width: recording.width,
    height: recording.height,
    frames: recording.frames.map((f) => ({
      rgb: base64(rgbOf(f.rgba)), alpha: base64(f.alpha), reset: f.reset, ratio: f.ratio,
      model: f.model, backend: f.backend,
    })),
  };
}
