"""Duties of every agent, held by no lease: the failure detector (each agent watches the
droplets the monitor map gives it and votes) and the quorum watch (the loss of JetStream's
quorum is told by mail even though the mesh's own queue is out of reach)."""
