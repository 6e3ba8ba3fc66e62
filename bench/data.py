"""Datastores under faults, and their backups timed. Prints one JSON object.

A local mesh (process runtime, the host's real PostgreSQL and Redis) runs `shop,3` (master,
shop-web1, shop-web2; prod's database and redis on shop-web1) with the example backend. The
bench sets prod's `db_password` itself (`meshctl secret set`; the datastore takes it in place),
reads the database's user and name from its allocation (KV `mesh_alloc`) and its address from
`meshctl status --json`, and a thread commits one row every 10 ms over one session
(`examples/app/visits.py`'s protocol client), reconnecting 50 ms after any error and going on
with the next id. A write counts as acknowledged when CommandComplete and ReadyForQuery came
back. Then:

- `--kills` times (default 10): `meshctl chaos kill shop-web1`, until the recovery leader
  records `droplet_recovered` and writes are acknowledged again, then 3 s more.
  `db_unavailable_s` (per kill, `_p50`, `_max`): from the last acknowledged write before the
  first failed one to the first acknowledged after it (an upper bound of the outage, within
  one write interval); `confirmed_s` and `recovered_s`: from the kill command's start to the
  `failure_confirmed` and `droplet_recovered` events.
- `acked_writes_lost`: acknowledged ids missing from the table at the end;
  `unacked_writes_present`: ids sent but not acknowledged (the session broke) that were
  committed all the same (no loss: the client just never heard).
- the database filled to `--mb` (default 100; 10^6 bytes of `pg_database_size`), then
  `meshctl backup now shop prod database` timed (`backup_s_<mb>mb`; `backup_droplet_s`: the
  dump, encryption and upload as the `backup_taken` event tells), the stored (encrypted,
  compressed) size from `meshctl backup list` (`backup_mb_<mb>mb`), and `meshctl backup restore
  --force` timed (`restore_s_<mb>mb`), which takes a safety backup first
  (`restore_safety_backup_s`, from its `backup_taken` event) and then loads
  (`restore_load_s`, from `backup_restored`); `restore_rows_ok`: the filled table is whole.

`--quick`: 2 kills and 20 MB. Needs the host's PostgreSQL and Redis (`make datastores`) and
root. Run: `.venv/bin/python bench/data.py [--kills 10] [--mb 100] [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "examples" / "app"))

import visits  # noqa: E402

from deploy import BenchError, Mesh  # noqa: E402
from meshd.cli.context import load_context  # noqa: E402
from meshd.cli.session import connect, read_allocations  # noqa: E402
from protocol.messages import Allocation  # noqa: E402

HELLO = ROOT / "examples" / "app" / "hello.py"
DROPLET = "shop-web1"  # where prod's database runs: what the plan puts there, checked
INTERVAL_S = 0.01
RETRY_S = 0.05
SETTLE_S = 3.0
WAIT_S = 300.0
MB = 1_000_000
ROW_BYTES = 100  # a filled row on disk: tuple header, id, 64 characters, line pointer
WRITE_ERRORS = (OSError, visits.StoreError, ValueError, struct.error)
log = logging.getLogger("bench.data")


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    user: str
    database: str
    password: str


@dataclass(frozen=True, slots=True)
class Attempt:
    started: float  # wall clock
    ended: float
    id: int
    acked: bool
    sent: bool  # the INSERT went out (an unacknowledged one may have committed)


def session(target: Target, timeout: float = visits.TIMEOUT_S) -> Any:
    """A PostgreSQL session, authenticated and ready for a query."""
    wire = visits._Wire(visits._connected(target.host, target.port))
    try:
        wire.sock.settimeout(timeout)
        wire.send_raw(visits.startup_message(target.user, target.database))
        visits._authenticate(wire, target.user, target.password)
    except BaseException:
        wire.sock.close()
        raise
    return wire


def query(target: Target, sql: str, timeout: float = 600.0) -> list[list[str | None]]:
    """`sql` in a session of its own; its rows."""
    wire = session(target, timeout)
    try:
        return visits._query(wire, sql)
    finally:
        wire.sock.close()


class Writer:
    """Inserts ids 1, 2, ... into `writes`, one every INTERVAL_S over one session, in a thread
    until the block ends; every attempt recorded."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.attempts: list[Attempt] = []
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        wire: Any = None
        number, due = 0, time.monotonic()
        while not self._stop.is_set():
            number += 1
            started, sent = time.time(), False
            try:
                wire = wire or session(self.target)
                sent = True
                visits._query(wire, f"INSERT INTO writes (id) VALUES ({number})")
            except WRITE_ERRORS as err:
                self.attempts.append(Attempt(started, time.time(), number, False, sent))
                self.errors[f"{type(err).__name__}: {str(err)[:60]}"] += 1
                if wire is not None:
                    wire.sock.close()
                wire = None  # the next write reconnects
                time.sleep(RETRY_S)
                due = time.monotonic()
                continue
            self.attempts.append(Attempt(started, time.time(), number, True, sent))
            due = max(due + INTERVAL_S, time.monotonic())
            time.sleep(max(0.0, due - time.monotonic()))
        if wire is not None:
            wire.sock.close()

    def outage(self, since: float) -> tuple[float, int] | None:
        """After the first failed write since `since` and the first acknowledged one after
        it: the seconds from the last acknowledged write before the failure to that one, and
        the failed writes between; None until then."""
        attempts = [a for a in self.attempts if a.ended >= since]
        first = next((i for i, a in enumerate(attempts) if not a.acked), None)
        if first is None:
            return None
        back = next((a for a in attempts[first:] if a.acked), None)
        if back is None:
            return None
        before = [a.ended for a in self.attempts if a.acked and a.ended <= attempts[first].started]
        start = max(before, default=attempts[first].started)
        failed = sum(1 for a in attempts[first:] if not a.acked and a.started < back.started)
        return back.ended - start, failed

    def acked_since(self, since: float) -> bool:
        return any(a.acked for a in self.attempts[-50:] if a.ended >= since)


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


def events_of(mesh: Mesh, name: str, since: float = 0.0) -> list[dict[str, Any]]:
    """The mesh's events called `name` since `since`; none while the log cannot be read."""
    try:
        found = mesh.events()
    except BenchError:
        return []
    return [e for e in found if e["name"] == name and e["at"] >= since]


def status_of(mesh: Mesh) -> dict[str, Any] | None:
    try:
        return dict(json.loads(mesh.ok("status", "--json")))
    except BenchError:
        return None


def write_inputs(home: Path) -> tuple[Path, Path]:
    """The CSV and the deployment config of tests/mesh/test_datastores.py."""
    csv = home / "projects.csv"
    csv.write_text("Project,Servers,MasterSpec,WebSpec\nshop,3,s-1vcpu-2gb,s-1vcpu-1gb\n")
    services = {
        "backend": {"command": f"{sys.executable} {HELLO}",
                    "secrets": ["db_password", "redis_password"]},
        "frontend": {"enabled": False},
    }  # fmt: skip
    config = home / "deployment_config.json"
    projects = {"shop": {"services": services}}
    config.write_text(json.dumps({"deployment_platform": "process", "projects": projects}))
    return csv, config


def database_allocation(mesh: Mesh) -> Allocation:
    os.environ["MESHD_CONFIG_HOME"] = str(mesh.home / "config")

    async def read() -> dict[str, Allocation]:
        store = await connect(load_context(mesh.name))
        try:
            return await read_allocations(store)
        finally:
            await store.close()

    found = asyncio.run(read()).get("shop.prod.database")
    if found is None:
        raise BenchError("no allocation shop.prod.database in the mesh")
    return found


def set_password(mesh: Mesh) -> tuple[str, float]:
    """prod's db_password set to a value of the bench's (changed in place in the running
    database); the value and when it was set."""
    password = secrets.token_urlsafe(24)
    value = mesh.home / "db_password"
    value.write_text(password)  # as it is: no newline
    done = json.loads(mesh.ok("secret", "set", "shop", "prod", "db_password",
                              "--from-file", value, "--json"))  # fmt: skip
    value.unlink()
    if done["changed_in_place"] != ["shop.prod.database"]:
        raise BenchError(f"db_password was not changed in place: {done}")
    return password, time.time()


def start(mesh: Mesh, home: Path) -> tuple[Target, dict[str, Any]]:
    """The mesh up and published, the password set; the database to write to."""
    csv, config = write_inputs(home)
    log.info("Starting a mesh. context=%s home=%s", mesh.name, home)
    mesh.ok("up", "--droplets", "1", "--runtime", "process", timeout=300)
    mesh.ok("publish", csv, "--deploy-config", config, "--wait", timeout=300)
    password, set_at = set_password(mesh)
    wait_for(lambda: (s := status_of(mesh)) and all(
        v["healthy"] == v["desired"] for v in s["services"]), "every service healthy")  # fmt: skip
    # A kill rebuilds the droplet from its newest snapshot: one taken after the new password.
    fresh = wait_for(lambda: snapshot_after(mesh, DROPLET, set_at) or None,
                     f"a snapshot of {DROPLET} after the password", timeout=180)  # fmt: skip
    status = status_of(mesh) or {}
    (service,) = [s for s in status["services"] if (s["env"], s["service"]) == ("prod", "database")]
    if service["droplets"] != [DROPLET]:
        raise BenchError(f"prod's database runs on {service['droplets']}, not on {DROPLET}")
    address = next(d["address"] for d in status["droplets"] if d["name"] == DROPLET)
    env = database_allocation(mesh).env_vars
    target = Target(address, service["port"], env["DB_USER"], env["DB_NAME"], password)
    log.info("The database. host=%s port=%d db=%s snapshot=%s", address, target.port,
             target.database, fresh)  # fmt: skip
    return target, {"database": f"{target.database} on {DROPLET}"}


def snapshot_after(mesh: Mesh, droplet: str, since: float) -> str | None:
    droplets = (status_of(mesh) or {}).get("droplets", [])
    found = next((d["snapshot"] for d in droplets if d["name"] == droplet), None)
    return str(found["name"]) if found and time.time() - found["age_s"] > since else None


def kill_once(mesh: Mesh, writer: Writer, number: int) -> dict[str, Any]:
    wait_for(lambda: writer.acked_since(time.time() - 1), "writes acknowledged before a kill")
    killed = time.time()
    mesh.ok("chaos", "kill", DROPLET)
    log.info("Killed. kill=%d droplet=%s", number, DROPLET)
    outage = wait_for(lambda: writer.outage(killed), "writes acknowledged again after the kill")
    log.info("Writes acknowledged again. unavailable_s=%.2f failed=%d", *outage)
    recovered = wait_for(lambda: events_of(mesh, "droplet_recovered", killed),
                         f"{DROPLET} recovered")  # fmt: skip
    confirmed = events_of(mesh, "failure_confirmed", killed)
    time.sleep(SETTLE_S)
    found = {
        "unavailable_s": round(outage[0], 2),
        "failed_writes": outage[1],
        "confirmed_s": round(confirmed[0]["at"] - killed, 2) if confirmed else None,
        "recovered_s": round(recovered[0]["at"] - killed, 2),
    }
    log.info("Recovered. kill=%d %s", number, found)
    return found


def count_lost(target: Target, writer: Writer) -> dict[str, Any]:
    present = {int(r[0] or 0) for r in query(target, "SELECT id FROM writes")}
    acked = {a.id for a in writer.attempts if a.acked}
    unacked = {a.id for a in writer.attempts if a.sent and not a.acked}
    lost = sorted(acked - present)
    return {
        "acked_writes_lost": len(lost),
        "lost_ids": lost[:20],
        "writes_acked": len(acked),
        "writes_failed": sum(1 for a in writer.attempts if not a.acked),
        "unacked_writes_present": len(unacked & present),
        "write_errors": dict(writer.errors.most_common(8)),
    }


def kills(mesh: Mesh, target: Target, count: int) -> dict[str, Any]:
    query(target, "CREATE TABLE IF NOT EXISTS writes (id bigint PRIMARY KEY)")
    per_kill: list[dict[str, Any]] = []
    with Writer(target) as writer:
        for number in range(1, count + 1):
            per_kill.append(kill_once(mesh, writer, number))
    gaps = [k["unavailable_s"] for k in per_kill]
    return {
        "kills": len(per_kill),
        "db_unavailable_s_p50": round(statistics.median(gaps), 2),
        "db_unavailable_s_max": max(gaps),
        "db_unavailable_s": gaps,
        "recovered_s": [k["recovered_s"] for k in per_kill],
        "confirmed_s": [k["confirmed_s"] for k in per_kill],
        "failed_writes": [k["failed_writes"] for k in per_kill],
    } | count_lost(target, writer)


def database_bytes(target: Target) -> int:
    return int(query(target, "SELECT pg_database_size(current_database())")[0][0] or 0)


def fill(target: Target, size_mb: int) -> int:
    """Rows in table `bulk` until the database holds `size_mb` MB; how many rows."""
    query(target, "CREATE TABLE bulk (id bigint, pad text)")
    rows, size = 0, database_bytes(target)
    while size < size_mb * MB:
        more = min(max((size_mb * MB - size) // ROW_BYTES + 1, 1000), 200_000)
        query(target, f"INSERT INTO bulk SELECT i, repeat(md5(i::text), 2)"
                      f" FROM generate_series({rows + 1}, {rows + more}) i")  # fmt: skip
        rows, size = rows + more, database_bytes(target)
    log.info("Filled. rows=%d database_mb=%.1f", rows, size / MB)
    return rows


def one_event(mesh: Mesh, name: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The detail of event `name` that `match`es (events are recorded soon, not at once)."""
    found = wait_for(lambda: [e for e in events_of(mesh, name) if match(e["detail"] or {})],
                     f"event {name}", timeout=30)  # fmt: skip
    return dict(found[-1]["detail"])


def backup_and_restore(mesh: Mesh, target: Target, size_mb: int) -> dict[str, Any]:
    rows = fill(target, size_mb)
    found: dict[str, Any] = {"database_mb": round(database_bytes(target) / MB, 1), "rows": rows}
    started = time.monotonic()
    taken = json.loads(mesh.ok("backup", "now", "shop", "prod", "database", "--json",
                               timeout=1800))  # fmt: skip
    found[f"backup_s_{size_mb}mb"] = round(time.monotonic() - started, 2)
    (key,) = taken["taken"]
    listed = [json.loads(line) for line in mesh.ok("backup", "list", "--json").splitlines()]
    stored = next((b["size_bytes"] for b in listed if b["key"] == key), None)
    found[f"backup_mb_{size_mb}mb"] = None if stored is None else round(stored / MB, 2)
    detail = one_event(mesh, "backup_taken", lambda d: d.get("key") == key)
    found["backup_droplet_s"] = detail["seconds"]
    found["backup_plain_mb"] = round(detail["plain_bytes"] / MB, 2)
    found["backup_stored_mb_event"] = round(detail["stored_bytes"] / MB, 2)
    if stored is None:
        log.error("meshctl backup list does not list the backup just taken. key=%s", key)
    log.info("Backed up. key=%s %s", key, found)
    query(target, "DELETE FROM bulk WHERE id % 2 = 0")  # what the restore must bring back
    started = time.monotonic()
    mesh.ok("backup", "restore", "shop", "prod", key, "--force", timeout=1800)
    found[f"restore_s_{size_mb}mb"] = round(time.monotonic() - started, 2)
    why = f"before restoring {key}"
    found["restore_safety_backup_s"] = one_event(
        mesh, "backup_taken", lambda d: d.get("why") == why
    )["seconds"]
    found["restore_load_s"] = one_event(mesh, "backup_restored", lambda d: d.get("from") == key)[
        "seconds"
    ]
    back = wait_for(lambda: restored_rows(target), "the database after the restore", timeout=60)
    found["restore_rows_ok"] = back == rows
    log.info("Restored. %s", found)
    return found


def restored_rows(target: Target) -> int | None:
    try:
        return int(query(target, "SELECT count(*) FROM bulk")[0][0] or 0)
    except WRITE_ERRORS:
        return None


def keep_logs(mesh: Mesh) -> Path:
    """Every droplet's logs copied out of the state that `down` removes."""
    account = mesh.home / "state" / mesh.name / "provider" / "account.json"
    kept = Path(tempfile.mkdtemp(prefix="meshd-bench-data-logs-"))
    droplets = json.loads(account.read_text())["droplets"].values() if account.exists() else []
    for droplet in droplets:
        source = Path(droplet["dir"])
        (kept / source.name).mkdir(exist_ok=True)
        for found in source.glob("*.log"):
            shutil.copy(found, kept / source.name / found.name)
    return kept


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    logging.getLogger("meshd").setLevel(logging.WARNING)  # its store says it disconnects
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--mb", type=int, default=100, help="the database size to back up")
    parser.add_argument("--quick", action="store_true", help="2 kills and 20 MB")
    args = parser.parse_args()
    count, size_mb = (2, 20) if args.quick else (args.kills, args.mb)
    home = Path(tempfile.mkdtemp(prefix="meshd-bench-data-"))
    mesh = Mesh(home, f"bdata{uuid.uuid4().hex[:6]}")
    result: dict[str, Any] = {"runtime": "process", "quick": args.quick}
    started = time.monotonic()
    try:
        target, facts = start(mesh, home)
        result |= facts
        result |= kills(mesh, target, count)
        result |= backup_and_restore(mesh, target, size_mb)
    except Exception as err:  # any failure: the figures so far, what failed, the logs
        log.exception("The bench failed.")
        result["error"] = f"{type(err).__name__}: {err}"
        result["logs"] = str(keep_logs(mesh))
    finally:
        mesh.down()
        shutil.rmtree(home, ignore_errors=True)
    result["bench_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
