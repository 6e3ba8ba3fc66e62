"""What every agent runs: the composition root (`app`), the store (the only NATS code), leases,
the loops on KV, membership (liveness beats and the droplet's report), the mesh view, the
reconciler that makes the runtime run this droplet's allocations, the local HTTP API and the
outbox. `python -m meshd.agent` is the agent's command line (`__main__`)."""
