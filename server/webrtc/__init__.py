"""WebRTC (WHIP, DESIGN 4.6): a publisher's video track in, the matted track back on the same
peer connection, with a session of `server.streaming` per peer."""
