// lipstream watch page: one viewer of a session, for an audience.
//   /watch?janus=URL&room=R&feed=F   through Janus (what POST /sessions/{id}/publish answers), or
//   /watch?whep=/whep/WATCH_ID       straight from the server (each such viewer costs it an encode).
// Janus is spoken to over its HTTP API: create a session, attach the VideoRoom, join the room as a
// subscriber of the feed, answer Janus's offer, start; a long poll brings Janus's events and keeps the
// session alive. No build step, no library.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
window.watchState = { state: "connecting" };

function setStatus(text) { $("status").textContent = text; }
function showError(text) { $("error").textContent = text; $("error").hidden = !text; window.watchState = { state: "failed", error: text }; }

async function newPeer() {
  const pc = new RTCPeerConnection(await iceConfiguration());
  const stream = new MediaStream();
  pc.addEventListener("track", (e) => { stream.addTrack(e.track); $("avatar").srcObject = stream; });
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected") { setStatus("Watching."); window.watchState = { state: "watching" }; }
    if (pc.connectionState === "failed") showError("The connection failed (ICE could not connect); a TURN server may be needed.");
  });
  return pc;
}

async function watchWhep(path) {
  const pc = await newPeer();
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringComplete(pc);
  const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/sdp", ...authHeaders() }, body: pc.localDescription.sdp });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error || `The server refused the viewer (HTTP ${response.status}).`);
  }
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
}

class Janus {
  constructor(url) { this.url = url.replace(/\/$/, ""); this.waiting = new Map(); }
  async post(path, message) {
    const transaction = Math.random().toString(36).slice(2);
    const response = await fetch(this.url + path, { method: "POST", body: JSON.stringify({ ...message, transaction }) });
    const reply = await response.json();
    if (reply.janus === "error") throw new Error(`Janus refused ${message.janus}: ${reply.error.reason}`);
    return [reply, transaction];
  }
  async open() {
    const [reply] = await this.post("", { janus: "create" });
    this.session = reply.data.id;
    this.poll();
  }
  async poll() {
    while (this.session) {
      try {
        const response = await fetch(`${this.url}/${this.session}?maxev=10`);
        const events = await response.json();
        for (const event of Array.isArray(events) ? events : [events]) {
          const resolve = this.waiting.get(event.transaction);
          if (resolve) { this.waiting.delete(event.transaction); resolve(event); }
          if (event.janus === "hangup") showError(`Janus ended the stream: ${event.reason}.`);
        }
      } catch (err) {
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }
  async attach() {
    const [reply] = await this.post(`/${this.session}`, { janus: "attach", plugin: "janus.plugin.videoroom" });
    this.handle = reply.data.id;
  }
  // A VideoRoom request; resolves with Janus's answering event (its plugin data and JSEP).
  async request(body, jsep) {
    const transaction = Math.random().toString(36).slice(2);
    const answered = new Promise((resolve) => this.waiting.set(transaction, resolve));
    const response = await fetch(`${this.url}/${this.session}/${this.handle}`, {
      method: "POST", body: JSON.stringify({ janus: "message", transaction, body, ...(jsep ? { jsep } : {}) }),
    });
    let reply = await response.json();
    if (reply.janus === "ack") reply = await answered;
    const data = reply.plugindata?.data || {};
    if (reply.janus === "error" || data.error) throw new Error(`Janus refused ${body.request}: ${data.error || reply.error.reason}`);
    return [data, reply.jsep];
  }
}

async function watchJanus(url, room, feed) {
  const janus = new Janus(url);
  await janus.open();
  await janus.attach();
  const [, offer] = await janus.request({ request: "join", ptype: "subscriber", room, streams: [{ feed }] });
  const pc = await newPeer();
  await pc.setRemoteDescription(offer);
  await pc.setLocalDescription(await pc.createAnswer());
  await iceGatheringComplete(pc);
  await janus.request({ request: "start" }, { type: "answer", sdp: pc.localDescription.sdp });
}

async function main() {
  $("unmute").addEventListener("click", () => { $("avatar").muted = false; $("unmute").hidden = true; });
  try {
    if (params.get("janus")) {
      const room = Number(params.get("room")), feed = Number(params.get("feed"));
      if (!room || !feed) throw new Error("This address needs room= and feed= beside janus= (what POST /sessions/{id}/publish answers).");
      await watchJanus(params.get("janus"), room, feed);
    } else if (params.get("whep")) {
      await watchWhep(params.get("whep"));
    } else {
      throw new Error("Nothing to watch: open this page as /watch?janus=URL&room=R&feed=F or /watch?whep=/whep/ID.");
    }
  } catch (err) {
    showError(err.message || String(err));
    setStatus("Not watching.");
  }
}

main();
