"""The pure core: values and functions over them, no asyncio, NATS, aiohttp or file I/O
(templates excepted: rendering a mail reads the project's own files). What the desired state
means (spec, sizes, resources, placement, plan), what an instance gets (env vars, rollout),
who watches whom (monitors), where instances go when a droplet fails (displacement), what the
load balancer routes, what the status shows and what the operator is told (notices)."""
