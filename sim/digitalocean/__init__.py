"""A DigitalOcean in a box: a stateful stand-in of the API v2 (the operations a meshd provider
uses, checked against DigitalOcean's own description in `vendor/`), whose droplets are real
machines: network and mount namespaces with an sshd, a metadata service and a boot. Test
infrastructure, outside the wheel; `docs/testing.md` says how to start it and what it does not
model."""
