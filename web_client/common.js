// What both pages need: the bearer token, the server's ICE servers, waiting for ICE gathering.
"use strict";

// A bearer token, when the server needs one, comes in the page's fragment (#token=...): browsers never
// send the fragment to the server, so it stays out of request lines and logs.
function authHeaders() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// The server's STUN/TURN servers, with a short-lived TURN credential of this page's own where it issues
// them; without any, the browser's defaults (host candidates only).
async function iceConfiguration() {
  const response = await fetch("/ice-servers", { headers: authHeaders() });
  if (!response.ok) return {};
  const { iceServers, iceTransportPolicy } = await response.json();
  return iceServers.length ? { iceServers, iceTransportPolicy } : {};
}

// Offers and answers go out with all candidates (the server does not take trickled ones); gathering
// that hangs (an unreachable STUN/TURN server) is cut at 3 s with what was found.
function iceGatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", check); resolve(); } };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000);
  });
}
