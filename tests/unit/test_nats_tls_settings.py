"""Where a mesh's NATS is TLS: the mesh configuration carries the CA's certificate, the
server's configuration names the droplet's certificates on both the client port and the
routes (verified there), clients trust the mesh CA alone under the mesh's server name, and a
bootstrap writes the same files all day. Local meshes stay plain."""

from __future__ import annotations

import datetime
import logging
import os
import ssl
from pathlib import Path

import pytest

from meshd.agent.certificates import (
    CertificateExpiry,
    mesh_ca,
    renew_own_certificate,
    renewal_due,
    tls_files,
)
from meshd.agent.config import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    LEAF_CERT_FILE,
    LEAF_KEY_FILE,
    CoreServer,
    MeshConfig,
    nats_server_conf,
    new_passwords,
)
from meshd.agent.store.connection import connect_options, tls_context
from meshd.core.deploys import HookCredentials
from meshd.core.meshca import MeshCA, expires, issue_leaf, make_ca
from meshd.core.secret_plan import MESH_CA_KEY
from meshd.core.trust import ClientTrust
from plugins.providers import DropletRecord, DropletStatus

CORE = (CoreServer("master", "10.110.0.2"), CoreServer("web1", "10.110.0.3"))


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return make_ca("seed-do", datetime.datetime.now(datetime.UTC))


def config(tls_ca: str = "") -> MeshConfig:
    return MeshConfig(mesh="seed-do", core=CORE, passwords=new_passwords(), tls_ca=tls_ca)


def test_a_local_mesh_is_plain_nats(tmp_path: Path) -> None:
    plain = config()
    assert plain.trust() is None
    assert "tls" not in nats_server_conf(plain, CORE[0], tmp_path / "js")
    assert MeshConfig.from_json(plain.to_json()).tls_ca == ""


def test_a_tls_mesh_serves_clients_and_routes_with_the_droplet_certificate(
    ca: MeshCA, tmp_path: Path
) -> None:
    text = nats_server_conf(config(ca.cert_pem.decode()), CORE[0], tmp_path / "js",
                            droplet_dir=tmp_path)  # fmt: skip
    client, cluster = text.split("cluster {")
    for part in (client, cluster):
        assert f'cert_file: "{tmp_path / LEAF_CERT_FILE}"' in part
        assert f'key_file: "{tmp_path / LEAF_KEY_FILE}"' in part
        assert f'ca_file: "{tmp_path / CA_CERT_FILE}"' in part
    assert "verify: true" in cluster and "verify:" not in client


def test_a_tls_mesh_server_needs_the_droplet_directory(ca: MeshCA, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        nats_server_conf(config(ca.cert_pem.decode()), CORE[0], tmp_path / "js")


def test_the_ca_certificate_travels_in_user_data_and_hook_credentials(ca: MeshCA) -> None:
    tls = config(ca.cert_pem.decode())
    again = MeshConfig.from_json(tls.to_json())
    assert again.trust() == tls.trust()
    assert again.trust() is not None and again.trust().server_name == "nats.seed-do.meshd"  # type: ignore[union-attr]
    hook = HookCredentials("seed-do", "do", "p", ("nats://10.110.0.2:4222",), "pw",
                           tls_ca=tls.tls_ca)  # fmt: skip
    assert HookCredentials.from_json(hook.to_json()).trust() == tls.trust()
    old = HookCredentials.from_json(hook.to_json().replace('"tls_ca"', '"ignored"'))
    assert old.trust() is None  # credentials written before TLS: plain


def test_a_client_trusts_the_mesh_ca_alone_and_checks_the_server_name(ca: MeshCA) -> None:
    trust = config(ca.cert_pem.decode()).trust()
    assert trust is not None
    context = tls_context(trust)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "meshd seed-do CA"),),)
    ]
    options = connect_options(["nats://127.0.0.1:40001", "nats://10.110.0.3:4222"], "operator",
                              "pw", name="meshctl", forever=False, reconnects=1,
                              inbox_prefix=None, trust=trust)  # fmt: skip
    assert options["servers"] == ["tls://127.0.0.1:40001", "tls://10.110.0.3:4222"]
    assert options["tls_hostname"] == "nats.seed-do.meshd"
    plain = connect_options(["nats://127.0.0.1:4222"], "agent", "pw", name="a", forever=True,
                            reconnects=1, inbox_prefix=None, trust=None)  # fmt: skip
    assert plain["servers"] == ["nats://127.0.0.1:4222"] and "tls" not in plain


def test_a_bootstrap_writes_the_ca_and_the_droplets_own_certificate_never_the_cas_key(
    ca: MeshCA,
) -> None:
    record = DropletRecord("501", "web1", "s-1vcpu-1gb", "10.110.0.3", DropletStatus.ACTIVE,
                           (), 0.0, "203.0.113.9")  # fmt: skip
    files = tls_files(ca, "seed-do", record)
    assert set(files) == {CA_CERT_FILE, LEAF_CERT_FILE, LEAF_KEY_FILE}
    assert files[CA_CERT_FILE] == ca.cert_pem
    assert not any(ca.key_pem in data for data in files.values())
    assert tls_files(ca, "seed-do", record) == files  # run again: nothing changes


def test_the_cas_key_comes_from_the_mesh_secret_else_an_older_meshs_file(
    ca: MeshCA, tmp_path: Path
) -> None:
    held = {MESH_CA_KEY: ca.key_pem}
    assert mesh_ca(ca.cert_pem.decode(), tmp_path, held.get) == ca
    assert mesh_ca(ca.cert_pem.decode(), tmp_path, {}.get) is None  # an untrusted droplet
    (tmp_path / "secrets").mkdir()
    (tmp_path / CA_CERT_FILE).write_bytes(ca.cert_pem)
    (tmp_path / CA_KEY_FILE).write_bytes(ca.key_pem)
    assert mesh_ca(ca.cert_pem.decode(), tmp_path, {}.get) == ca


def test_a_droplet_reports_when_its_certificate_ends_and_renewal_is_due_half_a_year_before(
    ca: MeshCA, tmp_path: Path
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    expiry = CertificateExpiry(tmp_path)
    assert expiry() == 0.0 and not renewal_due(0.0, now.timestamp())  # none: nothing to renew
    (tmp_path / "secrets").mkdir()
    old, _ = issue_leaf(ca, "seed-do", "web1", "10.110.0.3", now - datetime.timedelta(days=600))
    (tmp_path / LEAF_CERT_FILE).write_bytes(old)
    assert expiry() == expires(old).timestamp()
    assert renewal_due(expiry(), now.timestamp())
    young, _ = issue_leaf(ca, "seed-do", "web1", "10.110.0.3", now)
    (tmp_path / LEAF_CERT_FILE).write_bytes(young)
    os.utime(tmp_path / LEAF_CERT_FILE, ns=(1, 1))  # another mtime: read again
    assert expiry() == expires(young).timestamp()
    assert not renewal_due(expiry(), now.timestamp())


def test_up_makes_the_mesh_ca_once_beside_the_context_and_down_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshd.cli.cloud import mesh_ca
    from meshd.cli.context import ca_file, remove_context

    monkeypatch.setenv("MESHD_CONFIG_HOME", str(tmp_path))
    first = mesh_ca("do")
    assert ca_file("do").stat().st_mode & 0o777 == 0o600
    assert mesh_ca("do") == first  # an `up` run again keeps the CA
    remove_context("do")
    assert not ca_file("do").exists()


def test_a_tls_client_keeps_asyncios_half_close_notice_off_the_operators_screen(
    ca: MeshCA, caplog: pytest.LogCaptureFixture
) -> None:
    from meshd.agent.store.connection import SSL_EOF_NOISE

    tls_context(ClientTrust(ca.cert_pem.decode(), "nats.seed-do.meshd"))
    asyncio_log = logging.getLogger("asyncio")
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        asyncio_log.warning(SSL_EOF_NOISE)
        asyncio_log.warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]


def test_a_droplet_renews_its_own_certificate_only_when_it_nears_its_end(
    ca: MeshCA, tmp_path: Path
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    (tmp_path / "secrets").mkdir()
    for name, data in ((CA_CERT_FILE, ca.cert_pem), (CA_KEY_FILE, ca.key_pem)):
        (tmp_path / name).write_bytes(data)
    young, _ = issue_leaf(ca, "seed-do", "web1", "10.110.0.3", now - datetime.timedelta(days=500))
    (tmp_path / LEAF_CERT_FILE).write_bytes(young)
    assert not renew_own_certificate(tmp_path, "seed-do", "web1", "10.110.0.3", now)

    old, _ = issue_leaf(ca, "seed-do", "web1", "10.110.0.3", now - datetime.timedelta(days=600))
    (tmp_path / LEAF_CERT_FILE).write_bytes(old)
    assert renew_own_certificate(tmp_path, "seed-do", "web1", "10.110.0.3", now)
    assert expires((tmp_path / LEAF_CERT_FILE).read_bytes()) - now > datetime.timedelta(days=700)
    assert (tmp_path / LEAF_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert not renew_own_certificate(tmp_path, "seed-do", "web1", "10.110.0.3", now)

    (tmp_path / LEAF_CERT_FILE).unlink()  # lost: issued again
    assert renew_own_certificate(tmp_path, "seed-do", "web1", "10.110.0.3", now)
    (tmp_path / CA_KEY_FILE).unlink()  # a droplet without the CA issues nothing
    assert not renew_own_certificate(tmp_path, "web1", "web1", "10.110.0.3", now)


def test_a_hook_of_a_repository_on_master_connects_with_the_mesh_ca(ca: MeshCA) -> None:
    from meshd.agent.config import ServerPlacement
    from meshd.agent.git_shell import hook_credentials
    from meshd.core.git_hosting import GitCommand

    tls = config(ca.cert_pem.decode())
    pushed = GitCommand("git-receive-pack", "shop")
    credentials = hook_credentials(tls, ServerPlacement(0, CORE), pushed)
    assert credentials.trust() == tls.trust() and credentials.user == "deployer"
    assert hook_credentials(config(), ServerPlacement(0, CORE), pushed).trust() is None
