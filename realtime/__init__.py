"""The real-time server: sessions, the shared inference scheduler, compositing, media tracks, signaling."""
