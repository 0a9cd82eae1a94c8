// The page's "webrtc" mode (DESIGN 4.6): the camera published over WHIP (POST /v1/whip), the
// matted track the server sends back shown as the composite, per-frame stats from the data
// channel `ptq4vm`. No trickle ICE: the offer goes out with its candidates gathered.

const GATHER_MS = 3000;

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_MS);  // host candidates come at once; do not wait on STUN
  });
}

// Publishes `track`; `onTrack(stream)` gets the returned video, `onStats(obj)` each data
// channel message, `onEnd(reason)` the end. Returns `close()`, which also DELETEs the session.
export async function publish({ track, url, onTrack, onStats, onEnd }) {
  const pc = new RTCPeerConnection();
  pc.addTransceiver(track, { direction: "sendrecv" });
  const channel = pc.createDataChannel("ptq4vm");
  channel.onmessage = (event) => {
    const obj = JSON.parse(event.data);
    if (obj.type === "error") onEnd(`${obj.code}: ${obj.message}`);
    else onStats(obj);
  };
  pc.ontrack = (event) => onTrack(event.streams[0] || new MediaStream([event.track]));
  pc.onconnectionstatechange = () => {
    if (["failed", "closed"].includes(pc.connectionState)) onEnd(`connection ${pc.connectionState}`);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const answer = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp,
  });
  if (answer.status !== 201) {
    pc.close();
    throw new Error(`WHIP offer refused: ${answer.status} ${await answer.text()}`);
  }
  const location = new URL(answer.headers.get("Location"), url).href;
  await pc.setRemoteDescription({ type: "answer", sdp: await answer.text() });
  return async () => {
    pc.close();
    await fetch(location, { method: "DELETE" }).catch(() => {});
  };
}

// What the page's background choice means to the server: a colour, blur, or an uploaded image.
export async function backgroundParam(choice, colour, imageFile) {
  if (choice === "colour") return colour;
  if (choice === "image" && imageFile) {
    const form = new FormData();
    form.append("image", imageFile);
    const stored = await fetch("/v1/backgrounds", { method: "POST", body: form });
    if (stored.ok) return (await stored.json()).id;
  }
  return "blur";
}
