"""Kept for local meshes started before the agent moved to `meshd.agent`: their droplets'
launcher runs `python -m meshd.agent_cli droplet DIR`. The entry point is
`meshd.agent.__main__`."""

from meshd.agent.__main__ import main

if __name__ == "__main__":
    main()
