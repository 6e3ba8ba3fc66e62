"""A local mesh shared by the read-only checks of a session (each xdist worker has its own):
one droplet, the `shop` project published and converged. Tests that change the mesh start
their own with `local_mesh`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.mesh import WEB_ONLY, LocalMesh, local_mesh, write_project


@pytest.fixture(scope="session")
def seed_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    home = tmp_path_factory.mktemp("seed")
    csv, config = write_project(home, ["shop,1,s-1vcpu-2gb,s-1vcpu-1gb"], WEB_ONLY)
    with local_mesh(home / "mesh") as mesh:
        mesh.ok("publish", csv, "--deploy-config", config, "--wait")
        yield mesh
