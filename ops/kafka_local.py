"""A real single-node Apache Kafka broker (KRaft combined mode) run from Maven Central jars.

No Docker is needed: ``ensure_jars`` fetches ``org.apache.kafka:kafka_2.13`` and a log4j2 backend
with ``mvn dependency:copy-dependencies`` into ``<kafka_home>/<version>/lib`` (once),
``start`` formats the storage (once) and launches ``java -cp 'lib/*' kafka.Kafka`` detached.
Users with Docker can use ``docker-compose.kafka.yml`` instead; ``start`` notices a broker that
already answers on the bootstrap address and leaves it alone.

Version choice (``Settings.kafka_version``, default 4.4.0)
-------------------------------------------------------------
Checked with Java 17 against aiokafka 0.14.0, faust-streaming 0.15.3 and confluent-kafka 2.16:
(1) admin create_topics with configs (compact, retention.ms=-1), describe_topics and
describe_configs; (2) idempotent acks=all producer (gzip) and a consumer group with commit;
(3) aiokafka transactions (commit, abort, send_offsets_to_transaction) read back with a
read_committed consumer; (4) a Faust worker whose agent counts 100 events into a RocksDB table,
processing_guarantee exactly_once and at_least_once (changelog values and committed input
offsets both checked, plus worker restarts with warm and with empty RocksDB);
(5) confluent-kafka idempotent zstd producer and group consumer.

* 4.4.0, the newest on Maven Central: all five pass, so it is the default. Kafka 4 removed old
  protocol versions (KIP-896), but aiokafka 0.14 negotiates versions the broker still serves.
* 3.9.1 (last 3.x): all five pass too; use NOVAQUOTA_KAFKA_VERSION=3.9.1 with a fresh
  kafka_data_dir (storage written by 4.x cannot be read by 3.x).
* 4.0.x-4.3.x were not tried: the newest passed.
* Seen twice with exactly_once on 4.4.0, neither reproduced in 30+ later runs (4.4.0 and
  3.9.1), so not attributed to the broker: once a worker committed no transaction for 60 s
  (nothing visible to read_committed until it stopped; cause unknown); once, on SIGTERM,
  Faust's ProducerBuffer crashed with aiokafka's client-side IllegalOperation "Can't send
  messages while not in transaction" and table increments were lost while the input offsets
  were committed.

Notes: aiokafka has no lz4/snappy/zstd codec unless their extra packages are installed (gzip
works); Faust does not create its *source* topics and a consumer subscription does not
auto-create them, so create input topics before a worker subscribes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from novaquota.streams.settings import Settings, ensure_dir

__all__ = [
    "KafkaLocalError",
    "ensure_jars",
    "is_reachable",
    "start",
    "status",
    "stop",
]

log = logging.getLogger(__name__)

_COMPLETE_MARKER = ".novaquota-complete"
_LOG_TAIL_LINES = 40
# Brokers this process launched itself: kept so that they are reaped (no zombies) on stop.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class KafkaLocalError(RuntimeError):
    """The local broker could not be fetched, started or stopped."""


# --- Paths -------------------------------------------------------------------------------------


class _Paths:
    def __init__(self, settings: Settings) -> None:
        self.home = Path(settings.kafka_home).expanduser()
        self.version_dir = self.home / settings.kafka_version
        self.lib = self.version_dir / "lib"
        self.data = (
            Path(settings.kafka_data_dir).expanduser()
            if settings.kafka_data_dir
            else self.home / "data"
        )
        self.log = self.home / "broker.log"
        self.pid = self.home / "broker.pid"
        self.state = self.home / "broker.json"
        self.config = self.home / "server.properties"
        self.log4j = self.home / "log4j2.properties"


def _host_port(bootstrap: str) -> tuple[str, int]:
    """The first ``host:port`` of a bootstrap list (an optional ``scheme://`` is dropped)."""
    first = bootstrap.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bootstrap address must be host:port, got {bootstrap!r}")
    return host.strip("[]") or "localhost", int(port)


def _resource(name: str) -> bytes:
    return (resources.files("ops") / "kafka" / name).read_bytes()


# --- Reachability ------------------------------------------------------------------------------


def is_reachable(bootstrap: str, timeout: float = 1.0) -> bool:
    """True when a TCP connection to the first ``host:port`` of ``bootstrap`` succeeds."""
    try:
        host, port = _host_port(bootstrap)
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _answers_kafka(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when the broker answers a metadata request (aiokafka admin ``list_topics``).

    Runs on a private event loop in a worker thread, so it also works when the caller is
    itself inside a running event loop.
    """

    async def probe() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="novaquota-kafka-local",
            request_timeout_ms=int(timeout * 1000),
        )
        try:
            await asyncio.wait_for(admin.start(), timeout)
            await asyncio.wait_for(admin.list_topics(), timeout)
        finally:
            await admin.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pool.submit(asyncio.run, probe()).result(timeout + 5)
            return True
        except Exception:
            return False


# --- Jars --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (serialises concurrent downloads); a no-op without fcntl."""
    ensure_dir(path.parent)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _jars_ready(lib: Path) -> bool:
    return (lib / _COMPLETE_MARKER).is_file() and any(lib.glob("kafka_2.13-*.jar"))


def ensure_jars(settings: Settings) -> Path:
    """Fetch the broker's jars into ``<kafka_home>/<version>/lib`` once; return that directory.

    A completed download is marked, so later calls return at once without running Maven.
    Maven uses its default local repository (``~/.m2``) and any ``~/.m2/settings.xml``.
    """
    paths = _Paths(settings)
    if _jars_ready(paths.lib):
        return paths.lib
    with _locked(paths.version_dir / ".lock"):
        if _jars_ready(paths.lib):  # another process finished meanwhile
            return paths.lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaLocalError(
                "Maven ('mvn') is needed to fetch the Kafka jars; install it (apt-get install "
                "maven) or run a broker yourself (docker compose -f docker-compose.kafka.yml up -d)"
            )
        work = paths.version_dir / "mvn-work"
        ensure_dir(work)
        (work / "pom.xml").write_bytes(_resource("pom.xml"))
        tmp = paths.version_dir / f"lib.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            f"-Dkafka.version={settings.kafka_version}",
            f"-DoutputDirectory={tmp}",
        ]
        log.info("fetching Kafka %s jars: %s", settings.kafka_version, " ".join(cmd))
        try:
            proc = subprocess.run(
                cmd, cwd=work, capture_output=True, text=True, timeout=1800, check=False
            )
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise KafkaLocalError(
                f"Maven timed out fetching Kafka {settings.kafka_version}"
            ) from exc
        if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            out = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-_LOG_TAIL_LINES:])
            raise KafkaLocalError(
                f"Maven could not fetch Kafka {settings.kafka_version} (exit {proc.returncode}):"
                f"\n{out}"
            )
        (tmp / _COMPLETE_MARKER).write_text(
            f"org.apache.kafka:kafka_2.13:{settings.kafka_version}\n"
        )
        shutil.rmtree(paths.lib, ignore_errors=True)
        tmp.rename(paths.lib)
        return paths.lib


# --- Process bookkeeping -----------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        pass
    try:  # no /proc (macOS)
        out = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
        )
        return out.stdout
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not a running broker
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _our_pid(paths: _Paths) -> int | None:
    """The pid of the broker started for this kafka_home, if it still runs."""
    try:
        pid = int(paths.pid.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0 or not _alive(pid):
        return None
    cmd = _cmdline(pid)
    if "kafka.Kafka" not in cmd or str(paths.config) not in cmd:
        return None  # the pid was reused by another process
    return pid


def _clear_pid(paths: _Paths) -> None:
    for p in (paths.pid, paths.state):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _log_tail(paths: _Paths, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = paths.log.read_text(errors="replace")
    except OSError:
        return "(no broker log)"
    return "\n".join(text.splitlines()[-lines:])


def _read_state(paths: _Paths) -> dict[str, Any]:
    try:
        data = json.loads(paths.state.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


# --- Status ------------------------------------------------------------------------------------


def status(settings: Settings) -> dict[str, Any]:
    """The local broker's state.

    ``running``/``pid`` describe the broker started by this module for ``kafka_home``;
    ``reachable`` is a TCP check of the bootstrap address, so ``external`` (reachable but not
    ours) means some other broker (remote, Docker, ...) serves it.
    """
    paths = _Paths(settings)
    pid = _our_pid(paths)
    state = _read_state(paths) if pid else {}
    reachable = is_reachable(settings.bootstrap_servers)
    return {
        "running": pid is not None,
        "pid": pid,
        "bootstrap": settings.bootstrap_servers,
        "version": str(state.get("version", settings.kafka_version)),
        "log": str(paths.log),
        "data_dir": str(paths.data),
        "reachable": reachable,
        "external": reachable and pid is None,
    }


# --- Start -------------------------------------------------------------------------------------


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaLocalError("Java (17 or newer) is needed to run the local Kafka broker")
    return java


def _cluster_id() -> str:
    """A random KRaft cluster id (URL-safe base64 of 16 bytes). Like Kafka's own
    ``Uuid.randomUuid``, never one starting with "-": the storage tool's argument parser would
    take it for an option (one format in 64 failed that way)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _is_local(host: str) -> bool:
    if host in ("", "localhost", "0.0.0.0", "::", "::1") or host.startswith("127."):
        return True
    try:
        return host in (socket.gethostname(), socket.getfqdn())
    except OSError:  # pragma: no cover
        return False


def _render_config(settings: Settings, paths: _Paths) -> None:
    host, port = _host_port(settings.bootstrap_servers)
    if not _is_local(host):
        raise KafkaLocalError(
            f"bootstrap address {settings.bootstrap_servers} is not on this machine and does not "
            "answer; a local broker can only listen on localhost (set KAFKA_BOOTSTRAP_SERVERS)"
        )
    if settings.kafka_controller_port == port:
        raise KafkaLocalError(f"kafka_controller_port must differ from the bootstrap port {port}")
    listen_host = "" if host in ("0.0.0.0", "::") else host
    advertised = "localhost" if host in ("0.0.0.0", "::") else host
    template = string.Template(_resource("server.properties.template").decode())
    text = template.substitute(
        host=listen_host,
        advertised_host=advertised,
        port=port,
        controller_host=advertised,
        controller_port=settings.kafka_controller_port,
        log_dirs=str(paths.data),
    )
    paths.config.write_text(text)
    paths.log4j.write_bytes(_resource("log4j2.properties"))


def _base_cmd(java: str, settings: Settings, paths: _Paths, lib: Path) -> list[str]:
    return [
        java,
        *settings.kafka_heap.split(),
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={paths.log4j}",
        f"-Dkafka.logs.dir={paths.home / 'logs'}",
        "-cp",
        str(lib / "*"),
    ]


def _format_storage(java: str, settings: Settings, paths: _Paths, lib: Path) -> None:
    if (paths.data / "meta.properties").exists():
        return  # warm start: keep the data
    ensure_dir(paths.data)
    cmd = [
        *_base_cmd(java, settings, paths, lib),
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        _cluster_id(),
        "--config",
        str(paths.config),
        "--ignore-formatted",
    ]
    # The config's static controller.quorum.voters works for 3.9 and 4.x alike; with it,
    # --standalone / --initial-controllers must not be given.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        out = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-_LOG_TAIL_LINES:])
        raise KafkaLocalError(f"formatting {paths.data} failed (exit {proc.returncode}):\n{out}")


def _wait_ready(
    settings: Settings, paths: _Paths, pid: int, deadline: float, *, kill_on_failure: bool
) -> None:
    while True:
        if not _alive(pid):
            _reap(pid)
            _clear_pid(paths)
            raise KafkaLocalError(
                f"the Kafka broker exited during start-up; last lines of {paths.log}:\n"
                f"{_log_tail(paths)}"
            )
        if is_reachable(settings.bootstrap_servers, timeout=0.5) and _answers_kafka(
            settings.bootstrap_servers, timeout=min(5.0, max(1.0, deadline - time.monotonic()))
        ):
            return
        if time.monotonic() >= deadline:
            if kill_on_failure:
                _terminate(paths, pid, timeout=10.0)
            raise KafkaLocalError(
                f"the Kafka broker did not answer on {settings.bootstrap_servers} in time; "
                f"last lines of {paths.log}:\n{_log_tail(paths)}"
            )
        time.sleep(0.25)


def start(settings: Settings, *, timeout: float = 180.0) -> dict[str, Any]:
    """Start the local broker in the background and wait until it serves Kafka requests.

    Idempotent: returns the status at once when our broker already runs. When another broker
    (not started here) already answers on the bootstrap address, nothing is started and the
    returned status has ``external=True`` and a ``message``. Raises ``KafkaLocalError`` with
    the last lines of the broker log if the broker dies or does not answer within ``timeout``
    (a broker that did not come up in time is stopped again).
    """
    deadline = time.monotonic() + timeout
    paths = _Paths(settings)
    ensure_dir(paths.home)

    pid = _our_pid(paths)
    if pid is not None:
        _wait_ready(settings, paths, pid, deadline, kill_on_failure=False)
        return status(settings)
    _clear_pid(paths)  # stale

    if is_reachable(settings.bootstrap_servers):
        result = status(settings)
        result["message"] = (
            f"a broker not started by novaquota already serves {settings.bootstrap_servers}; "
            "not starting another"
        )
        log.warning("%s", result["message"])
        return result
    _render_config(settings, paths)
    if is_reachable(f"localhost:{settings.kafka_controller_port}"):
        raise KafkaLocalError(
            f"controller port {settings.kafka_controller_port} is in use; set "
            "NOVAQUOTA_KAFKA_CONTROLLER_PORT to a free port"
        )

    lib = ensure_jars(settings)
    java = _java()
    _format_storage(java, settings, paths, lib)

    if paths.log.exists():
        paths.log.replace(paths.log.with_name(paths.log.name + ".1"))
    cmd = [*_base_cmd(java, settings, paths, lib), "kafka.Kafka", str(paths.config)]
    with paths.log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.home,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    paths.pid.write_text(f"{proc.pid}\n")
    paths.state.write_text(
        json.dumps(
            {
                "pid": proc.pid,
                "version": settings.kafka_version,
                "bootstrap": settings.bootstrap_servers,
                "controller_port": settings.kafka_controller_port,
                "data_dir": str(paths.data),
                "started_at": time.time(),
            }
        )
    )
    log.info("started Kafka %s (pid %d), log %s", settings.kafka_version, proc.pid, paths.log)
    _wait_ready(settings, paths, proc.pid, deadline, kill_on_failure=True)
    return status(settings)


# --- Stop --------------------------------------------------------------------------------------


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal_group(pid: int, sig: int) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(pid, sig)  # start_new_session: the group id is the broker's pid
        else:  # pragma: no cover - not POSIX
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _terminate(paths: _Paths, pid: int, *, timeout: float) -> None:
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        log.warning("Kafka broker (pid %d) ignored SIGTERM for %.0fs; killing it", pid, timeout)
        _signal_group(pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < kill_deadline:
            time.sleep(0.05)
    _reap(pid)
    _clear_pid(paths)


def stop(settings: Settings, *, timeout: float = 60.0) -> bool:
    """Stop our broker: SIGTERM to its process group, SIGKILL after ``timeout`` seconds.

    Returns True if a broker was stopped, False if none of ours ran (a stale pid file is
    removed). A broker that this module did not start is never touched.
    """
    paths = _Paths(settings)
    pid = _our_pid(paths)
    if pid is None:
        _clear_pid(paths)
        return False
    _terminate(paths, pid, timeout=timeout)
    return True


if __name__ == "__main__":  # pragma: no cover - manual use: python -m ops.kafka_local start
    logging.basicConfig(level=logging.INFO)
    action = sys.argv[1] if len(sys.argv) > 1 else "status"
    s = Settings()
    if action == "start":
        print(json.dumps(start(s), indent=2))
    elif action == "stop":
        print(json.dumps({"stopped": stop(s)}))
    elif action == "jars":
        print(ensure_jars(s))
    else:
        print(json.dumps(status(s), indent=2))
