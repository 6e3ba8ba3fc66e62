"""The outside world behind small interfaces: providers, runtimes, load balancers, notifiers,
secrets. Each kind has one `typing.Protocol` in `<kind>/__init__.py`; plugins import only
`protocol/`, never `meshd/`."""
