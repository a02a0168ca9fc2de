// lipstream demo client: connect a microphone (or a sample file played through the same WebRTC path)
// to an avatar session, show the avatar, live stats and plain errors. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  video: $("avatar"), placeholder: $("placeholder"), form: $("setup"), avatar: $("avatar-select"),
  input: $("input-select"), connect: $("connect"), disconnect: $("disconnect"), interrupt: $("interrupt"),
  status: $("status"), error: $("error"),
};
const state = { pc: null, channel: null, sessionId: null, sample: null, audioContext: null, localStream: null,
  statsTimer: null, healthTimer: null, last: null, frameTimes: [], displayDelay: null, pipelineMs: null, closing: false };
window.lipstreamStats = {};

function setStatus(text) { ui.status.textContent = text; }

// Playback events from the server (speech_started, speech_ended, idle), as they arrive on the data channel.
window.lipstreamEvents = [];
function showPlayback(event) {
  window.lipstreamEvents.push(event);
  const text = {
    speech_started: () => `speaking (from frame ${event.frame})`,
    speech_ended: () => `${event.interrupted ? "interrupted" : "finished"} after ${event.position_s.toFixed(2)} s`,
    idle: () => "idle",
  }[event.event];
  if (text) $("stat-playback").textContent = text();
}
function showError(text) { ui.error.textContent = text; ui.error.hidden = !text; }
function setConnected(connected) {
  ui.connect.disabled = connected; ui.disconnect.disabled = !connected; ui.interrupt.disabled = !connected;
  ui.avatar.disabled = connected; ui.input.disabled = connected;
  ui.placeholder.hidden = connected;
}

async function loadChoices() {
  try {
    const [avatars, samples, health] = await Promise.all(
      ["/avatars", "/samples", "/health"].map((path) => fetch(path).then((r) => r.json())));
    ui.avatar.replaceChildren(...avatars.avatars.map((name) => new Option(name, name)));
    for (const name of samples.samples) ui.input.add(new Option(`Sample: ${name}`, `sample:${name}`));
    state.pipelineMs = health.pipeline_delay_ms;
  } catch (err) {
    showError("The server is not reachable. Is `lipstream serve` running?");
  }
}

async function audioSource() {
  const choice = ui.input.value;
  if (choice === "microphone") {
    try {
      return await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
    } catch (err) {
      if (err.name === "NotAllowedError" || err.name === "SecurityError") {
        throw new Error("Microphone permission was denied. Allow the microphone for this site, or choose a sample.");
      }
      throw new Error(`No microphone could be opened (${err.name}). Choose a sample instead.`);
    }
  }
  const sample = new Audio(`/samples/${encodeURIComponent(choice.slice("sample:".length))}`);
  sample.crossOrigin = "anonymous";
  state.audioContext = new AudioContext();
  const destination = state.audioContext.createMediaStreamDestination();
  state.audioContext.createMediaElementSource(sample).connect(destination);
  state.sample = sample;
  return destination.stream;
}

async function connect(event) {
  event?.preventDefault();
  showError("");
  setStatus("Connecting…");
  ui.connect.disabled = true;
  state.closing = false;
  try {
    state.localStream = await audioSource();
    const pc = new RTCPeerConnection(await iceConfiguration());
    state.pc = pc;
    for (const track of state.localStream.getAudioTracks()) pc.addTrack(track, state.localStream);
    pc.addTransceiver("video", { direction: "recvonly" });
    state.channel = pc.createDataChannel("control");
    state.channel.addEventListener("message", (e) => showPlayback(JSON.parse(e.data)));
    const remote = new MediaStream();
    pc.addEventListener("track", (e) => { remote.addTrack(e.track); ui.video.srcObject = remote; });
    pc.addEventListener("connectionstatechange", () => onConnectionState(pc));
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc);
    const response = await fetch("/offer", {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, avatar: ui.avatar.value }),
    });
    if (response.status === 401) {
      throw new Error("This server needs an access token: open the page as …/#token=YOUR_TOKEN (the part after # never leaves the browser).");
    }
    if (response.status === 503) {
      const retry = response.headers.get("Retry-After") || "a few";
      throw new Error(`The server is busy: every session is in use. Try again in ${retry} seconds.`);
    }
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error || `The server refused the connection (HTTP ${response.status}).`);
    state.sessionId = answer.session_id;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    if (state.sample) { await state.audioContext.resume(); await state.sample.play(); }
    setConnected(true);
    setStatus(`Connected to ${ui.avatar.value}.`);
    startStats();
  } catch (err) {
    showError(err.message || String(err));
    setStatus("Not connected.");
    await teardown(false);
  }
}

function onConnectionState(pc) {
  if (pc !== state.pc || state.closing) return;
  if (pc.connectionState === "failed") {
    showError("The connection failed (ICE could not connect). A firewall may block WebRTC; a TURN server may be needed. Press Connect to try again.");
    teardown(false);
  } else if (pc.connectionState === "disconnected") {
    setStatus("Connection interrupted; waiting for it to recover…");
  } else if (pc.connectionState === "connected") {
    setStatus(`Connected to ${ui.avatar.value}.`);
  }
}

async function teardown(tellServer) {
  state.closing = true;
  clearInterval(state.statsTimer);
  clearInterval(state.healthTimer);
  if (tellServer && state.sessionId) {
    await fetch(`/sessions/${state.sessionId}`, { method: "DELETE", headers: authHeaders() }).catch(() => {});
  }
  state.sample?.pause();
  state.localStream?.getTracks().forEach((t) => t.stop());
  await state.audioContext?.close().catch(() => {});
  state.pc?.close();
  Object.assign(state, { pc: null, channel: null, sessionId: null, sample: null, audioContext: null, localStream: null, last: null });
  ui.video.srcObject = null;
  setConnected(false);
  setStatus("Not connected.");
  window.lipstreamStats = {};
  for (const cell of document.querySelectorAll("#stats dd")) cell.textContent = "-";
}

async function disconnect() {
  await teardown(true);
  setStatus("Disconnected.");
}

async function interrupt() {
  if (state.sample) {
    // A sample is over once interrupted: stop it and stop sending what the audio pipeline still holds.
    state.sample.pause();
    state.localStream?.getAudioTracks().forEach((t) => { t.enabled = false; });
  }
  if (state.channel?.readyState === "open") {
    state.channel.send("interrupt");
  } else if (state.sessionId) {
    await fetch(`/sessions/${state.sessionId}/interrupt`, { method: "POST", headers: authHeaders() });
  }
  setStatus("Interrupted: the avatar is idle.");
}

function countFrames() {
  if (state.counting || !("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
  state.counting = true;
  const onFrame = (now, meta) => {
    state.frameTimes.push(now);
    while (state.frameTimes.length && now - state.frameTimes[0] > 2000) state.frameTimes.shift();
    if (meta.receiveTime) state.displayDelay = meta.expectedDisplayTime - meta.receiveTime;
    ui.video.requestVideoFrameCallback(onFrame);
  };
  ui.video.requestVideoFrameCallback(onFrame);
}

function startStats() {
  state.statsTimer = setInterval(updateStats, 1000);
  state.healthTimer = setInterval(async () => {
    try { await fetch("/health", { cache: "no-store" }); } catch {
      showError("The server is gone (it stopped answering). Press Connect to reconnect when it is back.");
      teardown(false);
    }
  }, 3000);
}

async function updateStats() {
  if (!state.pc) return;
  const report = await state.pc.getStats();
  const s = {};
  report.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") {
      s.width = r.frameWidth; s.height = r.frameHeight; s.jitterMs = r.jitter * 1000; s.packetsLost = r.packetsLost;
      s.framesDecoded = r.framesDecoded; s.timestamp = r.timestamp;
      if (r.jitterBufferEmittedCount) s.videoBufferMs = 1000 * r.jitterBufferDelay / r.jitterBufferEmittedCount;
    }
    if (r.type === "inbound-rtp" && r.kind === "audio" && r.jitterBufferEmittedCount) {
      s.audioBufferMs = 1000 * r.jitterBufferDelay / r.jitterBufferEmittedCount;
    }
    if (r.type === "candidate-pair" && r.nominated && r.currentRoundTripTime !== undefined) s.rttMs = r.currentRoundTripTime * 1000;
  });
  const times = state.frameTimes;
  if (times.length > 1) s.fps = (times.length - 1) / ((times[times.length - 1] - times[0]) / 1000);
  else if (state.last && s.framesDecoded !== undefined) {
    s.fps = (s.framesDecoded - state.last.framesDecoded) / ((s.timestamp - state.last.timestamp) / 1000);
  }
  state.last = s;
  if (state.pipelineMs != null) s.delayMs = state.pipelineMs + (state.displayDelay ?? 0) + (s.rttMs ?? 0) / 2;
  window.lipstreamStats = s;
  const fmt = (value, unit, digits = 0) => (value === undefined || Number.isNaN(value) ? "-" : `${value.toFixed(digits)}${unit}`);
  $("stat-fps").textContent = fmt(s.fps, "", 1);
  $("stat-resolution").textContent = s.width ? `${s.width}×${s.height}` : "-";
  $("stat-rtt").textContent = fmt(s.rttMs, " ms", 1);
  $("stat-jitter").textContent = fmt(s.jitterMs, " ms", 1);
  $("stat-lost").textContent = s.packetsLost ?? "-";
  $("stat-delay").textContent = fmt(s.delayMs, " ms");
}

ui.form.addEventListener("submit", connect);
ui.disconnect.addEventListener("click", disconnect);
ui.interrupt.addEventListener("click", interrupt);
ui.video.addEventListener("loadeddata", countFrames);
loadChoices();
