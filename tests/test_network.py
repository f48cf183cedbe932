"""Where tilegraph's clusters listen, and ``tls://`` specs.

A running ``local:2`` and ``ray:2`` cluster listen on loopback only: every LISTEN socket of
the driver and of all its child processes (scheduler, nannies, workers, dashboard; GCS
server, raylet, agents, workers), read with psutil. A batch scheduler's dashboard listens
on the profile's interface, or on loopback without one. A ``tls://`` spec reaches a
``dask scheduler --protocol tls`` with certificates from the Dask config or the profile,
and fails with one clear error without them (certificates made here with ``openssl``).
"""

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import dask
import psutil
import pytest
from helpers import free_port, stop, wait_port
from tilegraph import cluster
from tilegraph.cluster.jobqueue import BatchProfile, ProfileError, dashboard_address, load_tls
from tilegraph.cluster.specs import Spec, SpecError, check_reachable, parse_spec

BIN = os.path.dirname(sys.executable)

#: Run in a fresh interpreter (one Ray per process; the pytest process may hold other
#: tests' sockets): connect to argv[1], run tasks, print the LISTEN sockets of this
#: process and all its children as JSON, close.
_LISTENERS = textwrap.dedent(
    """
    import json, sys

    import psutil
    from tilegraph import cluster


    def main():
        ex = cluster.connect(sys.argv[1])
        try:
            assert ex.gather(ex.map(pow, [1, 2, 3], [2, 2, 2])) == [1, 4, 9]
            me = psutil.Process()
            rows = []
            for proc in [me, *me.children(recursive=True)]:
                try:
                    name, conns = proc.name(), proc.net_connections(kind="inet")
                except psutil.NoSuchProcess:
                    continue
                rows += [
                    [proc.pid, name, c.laddr.ip, c.laddr.port]
                    for c in conns
                    if c.status == psutil.CONN_LISTEN
                ]
            print(json.dumps({"dashboard": ex.dashboard_link, "listening": rows}))
        finally:
            ex.close()


    if __name__ == "__main__":
        main()
    """
)


def _loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (``::ffff:127.0.0.1``, what
    a dual-stack gRPC server bound to 127.0.0.1 reports)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _listening(spec: str, tmp_path) -> dict:
    script = tmp_path / "listeners.py"
    script.write_text(_LISTENERS)
    out = subprocess.run(
        [sys.executable, str(script), spec],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _not_loopback(rows: list) -> list:
    return [row for row in rows if not _loopback(row[2])]


def test_local_cluster_listens_on_loopback_only(tmp_path):
    found = _listening("local:2", tmp_path)
    rows = found["listening"]
    # scheduler, dashboard and two nannies in the driver; two workers, two sockets each
    assert len({row[0] for row in rows}) >= 3, rows
    assert not _not_loopback(rows), rows
    dashboard = found["dashboard"]
    assert dashboard.startswith("http://127.0.0.1:"), dashboard
    port = int(dashboard.split(":")[2].split("/")[0])
    assert [row[2] for row in rows if row[3] == port] == ["127.0.0.1"]


def test_ray_cluster_listens_on_loopback_only(tmp_path):
    rows = _listening("ray:2", tmp_path)["listening"]
    names = {row[1] for row in rows}
    assert {"gcs_server", "raylet"} <= names, rows  # Ray's own processes are seen
    assert any(name.startswith("ray::") for name in names), rows  # and its workers
    assert not _not_loopback(rows), rows


# -- batch schedulers: the dashboard ---------------------------------------------------


def _ipv4_interfaces() -> dict[str, str]:
    return {
        name: addr.address
        for name, addrs in psutil.net_if_addrs().items()
        for addr in addrs
        if addr.family == socket.AF_INET
    }


def _batch_listeners(profile: BatchProfile) -> tuple[list, list]:
    """(IPs the dashboard listens on, IPs the scheduler listens on) of a SLURM cluster
    object built from ``profile`` (nothing submitted)."""
    pytest.importorskip("dask_jobqueue")
    from tilegraph.cluster.jobqueue import make_cluster

    batch = make_cluster(parse_spec("slurm"), profile, submit=False)
    try:
        dash = batch.scheduler_info["services"]["dashboard"]
        sched = int(batch.scheduler_address.rpartition(":")[2])
        conns = psutil.Process().net_connections(kind="inet")
        listen = [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
        return sorted(a.ip for a in listen if a.port == dash), [
            a.ip for a in listen if a.port == sched
        ]
    finally:
        batch.close()


def test_batch_dashboard_on_loopback_without_interface():
    assert dashboard_address(BatchProfile()) == "127.0.0.1:0"
    dash, sched = _batch_listeners(BatchProfile())
    assert dash == ["127.0.0.1"]
    assert sched  # where dask-jobqueue puts it: all interfaces, for the compute nodes


def test_batch_dashboard_and_scheduler_on_the_named_interface():
    loopback = next((n for n, ip in _ipv4_interfaces().items() if ip == "127.0.0.1"), None)
    if loopback is None:
        pytest.skip("no interface with 127.0.0.1 here")
    assert dashboard_address(BatchProfile(interface=loopback)) == "127.0.0.1:0"
    dash, sched = _batch_listeners(BatchProfile(interface=loopback))
    assert dash == ["127.0.0.1"] and set(sched) == {"127.0.0.1"}
    others = {n: ip for n, ip in _ipv4_interfaces().items() if not _loopback(ip)}
    if others:  # a routable interface: both listen there, and only there
        name, ip = sorted(others.items())[0]
        dash, sched = _batch_listeners(BatchProfile(interface=name))
        assert dash == [ip] and set(sched) == {ip}


def test_batch_unknown_interface_is_one_line():
    with pytest.raises(ProfileError, match="'nosuch0' has no IPv4 address") as info:
        dashboard_address(BatchProfile(interface="nosuch0"))
    assert "\n" not in str(info.value)


# -- tls:// specs ----------------------------------------------------------------------


def test_tls_spec_parses_like_tcp():
    spec = parse_spec("tls://Head")
    assert spec == Spec("tls", address="tls://Head:8786")
    assert spec.backend == "dask" and str(spec) == "tls://Head:8786"
    assert parse_spec("TLS://10.0.0.5:9000").address == "tls://10.0.0.5:9000"
    assert "tls://HOST:PORT" in cluster.SPECS_HELP
    for bad in ("tls", "tls:4", "tls://", "tls://host:99999"):
        with pytest.raises(SpecError):
            parse_spec(bad)


def test_check_reachable_takes_tls_addresses():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_reachable(parse_spec(f"tls://127.0.0.1:{port}"))
    with pytest.raises(SpecError, match=f"127.0.0.1:{port}"):
        check_reachable(parse_spec(f"tls://127.0.0.1:{port}"))


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    """A throw-away CA and one certificate it signed, for 127.0.0.1 (server and client)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=tilegraph test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=127.0.0.1",
        cwd=folder,
    )  # fmt: skip
    (folder / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "node.pem", "-days", "2", "-extfile", "ext.cnf",
        cwd=folder,
    )  # fmt: skip
    return {name: str(folder / f"{name}") for name in ("ca.pem", "node.pem", "node.key")}


@pytest.fixture(scope="module")
def tls_scheduler(certs, tmp_path_factory):
    """``tls://127.0.0.1:PORT``: a scheduler that takes TLS connections only, one worker."""
    dask_cli = shutil.which("dask", path=BIN) or shutil.which("dask")
    if dask_cli is None:
        pytest.skip("the dask command is not installed")
    tls = [
        "--tls-ca-file", certs["ca.pem"], "--tls-cert", certs["node.pem"],
        "--tls-key", certs["node.key"],
    ]  # fmt: skip
    port = free_port()
    home = tmp_path_factory.mktemp("tls-cluster")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": home}
    scheduler = subprocess.Popen(
        [dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--protocol",
         "tls", "--no-dashboard", *tls],
        **quiet,
    )  # fmt: skip
    worker = None
    try:
        wait_port(port, scheduler)
        address = f"tls://127.0.0.1:{port}"
        worker = subprocess.Popen(
            [dask_cli, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
             "--host", "127.0.0.1", *tls],
            **quiet,
        )  # fmt: skip
        yield address
    finally:
        if worker is not None:
            stop(worker)
        stop(scheduler)


#: The Dask config keys of a client's certificates.
_TLS_KEYS = (
    "distributed.comm.tls.ca-file",
    "distributed.comm.tls.client.cert",
    "distributed.comm.tls.client.key",
)
_NO_CERTS = dict.fromkeys(_TLS_KEYS)


def _client_config(certs) -> dict:
    files = (certs["ca.pem"], certs["node.pem"], certs["node.key"])
    return dict(zip(_TLS_KEYS, files, strict=True))


@pytest.fixture
def no_profile(monkeypatch, tmp_path):
    """No cluster profile in the usual places (its ``tls`` section would win)."""
    monkeypatch.delenv("TILEGRAPH_JOBQUEUE_PROFILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)


def _runs_tasks(address: str, **kwargs) -> None:
    with cluster.connect(address, **kwargs) as ex:
        assert ex.gather(ex.map(pow, [1, 2, 3], [2, 2, 2])) == [1, 4, 9]


@pytest.mark.slow
def test_tls_spec_with_certificates_from_the_dask_config(tls_scheduler, certs, no_profile):
    with dask.config.set(_client_config(certs)):
        _runs_tasks(tls_scheduler)


@pytest.mark.slow
def test_tls_spec_with_certificates_from_the_profile(tls_scheduler, certs, tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        f"tls:\n  ca_file: {certs['ca.pem']}\n  cert: {certs['node.pem']}\n"
        f"  key: {certs['node.key']}\nslurm:\n  cores: 2\n"
    )
    with dask.config.set(_NO_CERTS):
        _runs_tasks(tls_scheduler, profile=str(profile))


@pytest.mark.slow
def test_tls_spec_without_certificates_is_one_clear_error(tls_scheduler, no_profile):
    start = time.monotonic()
    with dask.config.set(_NO_CERTS), pytest.raises(SpecError) as info:
        cluster.connect(tls_scheduler)
    message = str(info.value)
    assert "no TLS certificates configured" in message and "\n" not in message
    assert tls_scheduler in message and "distributed.comm.tls.ca-file" in message
    assert time.monotonic() - start < 10  # not Dask's 30 s connect timeout


def test_tls_profile_section_errors_are_one_line(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"tls:\n  ca_file: {tmp_path}/missing.pem\n  cert: {profile}\n")
    with pytest.raises(ProfileError, match=r"field 'tls.ca_file': no such file") as info:
        load_tls(profile)
    assert "\n" not in str(info.value)
    profile.write_text(f"tls:\n  ca_file: {profile}\n  certfile: {profile}\n")
    with pytest.raises(ProfileError, match=r"'tls.cert'|'tls.certfile'"):
        load_tls(profile)
    profile.write_text("slurm:\n  cores: 2\n")
    assert load_tls(profile) is None
