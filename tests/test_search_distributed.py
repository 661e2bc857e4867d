"""Multi-process search tests: torch.distributed ranks sharing a trial, and workers sharing a PostgreSQL study.

The PostgreSQL fixture starts a throw-away server on 127.0.0.1 (data directory and unix socket in a temp
dir; run as the ``postgres`` system user when the tests run as root, since postgres refuses root). The
tests are skipped only when no PostgreSQL server binaries are installed
(``apt-get install postgresql``) or psycopg2 is missing (``pip install psycopg2-binary``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "search_worker.py")
ROOT = os.path.dirname(HERE)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- torch.distributed


def test_ddp_ranks_train_the_same_archs(tmp_path):
    """Two gloo ranks: rank 0 drives the study, both ranks train each broadcast arch together."""
    proc = subprocess.run(
        [sys.executable, WORKER, "ddp", "--out", str(tmp_path), "--max-trials", "4", "--algorithm", "TPE"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = [(tmp_path / f"rank{r}.log").read_text().splitlines() for r in (0, 1)]
    assert logs[0] == logs[1] and len(logs[0]) == 4 == len(set(logs[0]))
    results = [json.loads((tmp_path / f"rank{r}.result.json").read_text()) for r in (0, 1)]
    assert results[0]["best"] == results[1]["best"] is not None
    assert results[0]["n_rows"] == results[1]["n_rows"] == 4
    assert results[0]["has_study"] and not results[1]["has_study"]  # only rank 0 talks to the storage
    assert (tmp_path / "search_results.json").exists()


# --------------------------------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> str | None:
    for cand in sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
        reverse=True,
    ):
        if os.path.exists(os.path.join(cand, "initdb")) and os.path.exists(os.path.join(cand, "pg_ctl")):
            return cand
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb/pg_ctl) found; install them with `apt-get install postgresql`"
        )
    pytest.importorskip("psycopg2", reason="psycopg2 is needed for postgresql:// storage (pip install psycopg2-binary)")
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    tmp = tempfile.mkdtemp(prefix="autodistill-pg-", dir="/tmp")
    if as_root:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' system user to run the server as")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        runuser = shutil.which("runuser")
        prefix = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-s", "/bin/sh", "-c"]
    os.chmod(tmp, 0o700)
    data, log = os.path.join(tmp, "data"), os.path.join(tmp, "server.log")
    port = _free_port()

    def run(cmd: list[str]) -> None:
        full = prefix + ([" ".join(cmd)] if prefix[:1] == ["su"] else cmd)
        res = subprocess.run(full, capture_output=True, text=True, timeout=120, cwd=tmp)
        if res.returncode != 0:
            raise RuntimeError(
                f"{cmd[0]} failed: {res.stdout}\n{res.stderr}\n" + (open(log).read() if os.path.exists(log) else "")
            )

    run([os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp} -c fsync=off -c max_connections=50"
    run(
        [
            os.path.join(bindir, "pg_ctl"),
            "-D",
            data,
            "-l",
            log,
            "-w",
            "-t",
            "60",
            "-o",
            f"'{opts}'" if prefix[:1] == ["su"] else opts,
            "start",
        ]
    )
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE autodistill")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/autodistill"
    finally:
        try:
            run([os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _worker(args: list[str], out: str) -> subprocess.Popen:
    logf = open(os.path.join(out, f"worker-{len(os.listdir(out))}.out"), "w")
    return subprocess.Popen(
        [sys.executable, WORKER, "worker", *args], env=_env(), stdout=logf, stderr=subprocess.STDOUT
    )


def _read_log(path) -> list[tuple[str, int, str]]:
    if not os.path.exists(path):
        return []
    rows = []
    for line in open(path).read().splitlines():
        kind, pid, arch = line.split(" ", 2)
        rows.append((kind, int(pid), arch))
    return rows


def _outputs(out: str) -> str:
    return "\n".join(open(p).read()[-3000:] for p in sorted(glob.glob(os.path.join(out, "worker-*.out"))))


def _study_trials(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_two_workers_share_a_postgres_study(postgres_url, tmp_path):
    out, log = str(tmp_path), str(tmp_path / "trained.log")
    common = [
        "--storage",
        postgres_url,
        "--study",
        "shared",
        "--out",
        out,
        "--log",
        log,
        "--max-trials",
        "6",
        "--sleep",
        "0.5",
    ]
    create = subprocess.run(
        [sys.executable, WORKER, "create", *common], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert create.returncode == 0, create.stderr[-3000:]
    # same seed on purpose: both workers' advisors propose the same sequence, so collisions are frequent
    workers = [_worker(common + ["--hostname", f"host{i}"], out) for i in range(2)]
    for w in workers:
        assert w.wait(timeout=120) == 0, _outputs(out)
    events = _read_log(log)
    done = [arch for kind, _, arch in events if kind == "done"]
    assert len(done) == 6 == len(set(done)), events  # max_trials respected, nothing trained twice
    assert Counter(kind for kind, _, _ in events) == {"start": 6, "done": 6}  # nothing lost mid-way
    trials = _study_trials(postgres_url, "shared")
    complete = [json.dumps(dict(sorted(t.params.items()))) for t in trials if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(json.dumps(json.loads(a)) for a in done)  # every trained arch recorded once
    assert not [t for t in trials if t.state.name in ("RUNNING", "FAIL")]
    print("trained per worker:", Counter(pid for kind, pid, _ in events if kind == "done"))
    data = json.loads((tmp_path / "search_results.json").read_text())
    assert data["n_trained"] == 6


def test_killed_worker_trial_is_retried(postgres_url, tmp_path):
    out, log = str(tmp_path), str(tmp_path / "trained.log")
    common = [
        "--storage",
        postgres_url,
        "--study",
        "killed",
        "--out",
        out,
        "--log",
        log,
        "--max-trials",
        "6",
        "--space",
        "2x3",
        "--heartbeat",
        "1",
        "--grace",
        "2",
    ]
    create = subprocess.run(
        [sys.executable, WORKER, "create", *common], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert create.returncode == 0, create.stderr[-3000:]
    # different host names: the survivor cannot use the dead-pid shortcut, the heartbeat has to catch it
    victim = _worker(common + ["--hostname", "host-a", "--first-sleep", "120"], out)
    deadline = time.time() + 60
    while not _read_log(log):
        assert time.time() < deadline and victim.poll() is None, _outputs(out)
        time.sleep(0.1)
    _, victim_pid, victim_arch = _read_log(log)[0]
    assert victim_pid == victim.pid
    survivor = _worker(common + ["--hostname", "host-b", "--sleep", "0.2"], out)
    time.sleep(1.0)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert survivor.wait(timeout=90) == 0, _outputs(out)
    events = _read_log(log)
    done = [arch for kind, pid, arch in events if kind == "done"]
    assert len(done) == 6 == len(set(done)), events  # the whole 2x3 space, each arch once
    assert victim_arch in done and all(pid == survivor.pid for kind, pid, _ in events if kind == "done")
    trials = _study_trials(postgres_url, "killed")
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and json.dumps(dict(sorted(failed[0].params.items()))) == json.dumps(
        json.loads(victim_arch)
    )
    assert failed[0].user_attrs.get("status") != "failed"  # interrupted, not a real failure: it does not count
    assert sum(t.state.name == "COMPLETE" for t in trials) == 6
    rows = json.loads((tmp_path / "search_results.json").read_text())["trials"]
    assert len(rows) == 6 and all(r["status"] == "trained" for r in rows)
