"""Local droplets: what systemd and the hypervisor are on a real droplet, for droplets that are
process groups on this machine (the `local` provider's machines)."""
