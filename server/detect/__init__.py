"""Possible-breach detection: pure rules over plain event data, and the Detector at the edge.

`server.detect.rules` and `server.detect.state` are pure (the clock is passed in, the state
is explicit and serialisable); `server.detect.engine.Detector` connects them to the store,
the incidents and the notifications.
"""
