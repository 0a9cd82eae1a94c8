"""Live sessions over the WebSocket (`/v1/stream`): the connection state machine, the
sessions (resume, capacity, eviction), the protocol messages and the frame codecs."""
