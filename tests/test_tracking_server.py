"""The team's MLflow tracking server (scripts/tracking_server.sh): PostgreSQL store, proxied artifacts, basic auth.
A fresh role and databases, a server on a free loopback port, the pipeline's train and sampler stages logging to
it, and everything read back through the server."""
from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO, _env, _run, free_port, need_dataset

SCRIPTS = REPO / "scripts"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(message: str) -> None:
    """Fail in CI (the server must be tested there), skip elsewhere."""
    if IN_CI:
        pytest.fail(message + " (CI=true: .ci/run installs and starts PostgreSQL)")
    pytest.skip(message)


def _postgres_ready() -> bool:
    """Whether the local PostgreSQL accepts connections on 127.0.0.1:5432."""
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"]).returncode == 0


def ensure_postgres() -> None:
    """Start the local Debian PostgreSQL cluster if it is down; skip (fail in CI) when there is none."""
    if not (shutil.which("psql") and shutil.which("pg_lsclusters") and shutil.which("pg_isready")):
        _unavailable("needs PostgreSQL (Debian: apt-get install -y postgresql)")
    if _postgres_ready():
        return
    clusters = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.split()
    if len(clusters) >= 2:
        subprocess.run(["pg_ctlcluster", clusters[0], clusters[1], "start"], capture_output=True, text=True)
    for _ in range(30):
        if _postgres_ready():
            return
        time.sleep(0.5)
    _unavailable(f"PostgreSQL is not running and `pg_ctlcluster {' '.join(clusters[:2])} start` did not start it")


def http_status(url: str, user: str | None = None, password: str | None = None) -> int:
    """The HTTP status of a GET, with basic auth if a user is given."""
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310 - our own loopback server
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture
def server(tmp_path) -> Iterator[dict]:
    """A fresh PostgreSQL role and databases and the tracking server on them; everything is removed afterwards."""
    need_dataset()
    ensure_postgres()
    name = "vaelab_test_" + secrets.token_hex(4)
    port = free_port()
    cfg = {"uri": f"http://127.0.0.1:{port}", "user": "admin", "password": secrets.token_hex(16),
           "db_user": name, "db_name": name, "db_password": secrets.token_hex(16),
           "artifacts": tmp_path / "artifacts", "log": tmp_path / "server.log"}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    db_env = {**base, "MLFLOW_DB_USER": name, "MLFLOW_DB_NAME": name, "MLFLOW_DB_PASSWORD": cfg["db_password"]}
    server_env = {**db_env, "MLFLOW_ARTIFACTS_DESTINATION": str(cfg["artifacts"]),
                  "MLFLOW_TRACKING_USERNAME": cfg["user"], "MLFLOW_TRACKING_PASSWORD": cfg["password"],
                  "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_SERVER_WORKERS": "1",
                  "MLFLOW_SERVER_DIR": str(tmp_path / "server")}
    process = None
    try:
        _run([str(SCRIPTS / "tracking_db.sh"), "create"], tmp_path, db_env, timeout=60)
        with open(cfg["log"], "w") as log:
            process = subprocess.Popen([str(SCRIPTS / "tracking_server.sh")], cwd=tmp_path, env=server_env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while True:
            try:
                if http_status(cfg["uri"] + "/health") == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the tracking server did not come up (exit {process.poll()}):\n"
                            + cfg["log"].read_text()[-4000:])
            time.sleep(0.5)
        yield cfg
    finally:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        subprocess.run([str(SCRIPTS / "tracking_db.sh"), "drop"], cwd=tmp_path, env=db_env, capture_output=True,
                       text=True, timeout=60)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:starlette.middleware.wsgi is deprecated")  # inside mlflow.server
def test_pipeline_logs_to_the_team_server(server, sampler_repo, tmp_path, monkeypatch):
    """train@1, decoder@1 and sampler@1 log to the server; the run, its metric history, its artifacts and the registered
    model come back through the server; artifacts live in the server's destination; a wrong password gets 401."""
    import mlflow
    import psycopg2
    import yaml

    uri, user, password = server["uri"], server["user"], server["password"]
    assert http_status(uri + "/health") == 200  # the pipeline's reachability probe needs no credentials
    search = uri + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(search) == 401
    assert http_status(search, user, "wrong-" + password) == 401
    assert http_status(search, user, password) == 200

    # A clone of the session's tiny reproduced copy, on its cache: its data and feature network are checked out,
    # and train@1, decoder@1 and sampler@1 run again (forced), now logging to the server.
    repo = tmp_path / "repo"
    _run(["git", "clone", "-q", str(sampler_repo), str(repo)], tmp_path, _env(sampler_repo))
    env = {**_env(repo), "MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": user,
           "MLFLOW_TRACKING_PASSWORD": password}
    _run(["dvc", "cache", "dir", "--local", str(sampler_repo / ".dvc" / "cache")], repo, env)
    _run(["dvc", "checkout", "download", "features"], repo, env)
    for stage in ("train@1", "decoder@1", "sampler@1"):
        log = _run(["dvc", "repro", "--force", "--single-item", stage], repo, env)
        assert f"Running stage '{stage}'" in log, log

    params = yaml.safe_load((repo / "params.yaml").read_text())["tracking"]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(params["experiment"])
    runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'beta=1'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1] and all(m.value == m.value for m in history)  # one epoch, not NaN

    # Artifacts come back through the server and live in its destination, not in the repository.
    got = Path(client.download_artifacts(run.info.run_id, "history.csv", str(tmp_path / "download")))
    assert got.read_text() == (repo / "metrics" / "betas" / "beta_1" / "history.csv").read_text()
    stored = server["artifacts"] / experiment.experiment_id / run.info.run_id / "artifacts" / "history.csv"
    assert stored.read_text() == got.read_text()
    assert not (repo / "mlartifacts").exists() and not (repo / "mlruns").exists()
    assert not (repo / "mlflow.db").exists()

    # The registered model: the version the sampler stage registered, alias beta-1, downloadable in full.
    version = client.get_model_version_by_alias(params["registered_model"], "beta-1")
    assert version.run_id == run.info.run_id
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{params['registered_model']}@beta-1",
                                                         dst_path=str(tmp_path / "model"), tracking_uri=uri))
    assert (model_dir / "MLmodel").is_file()

    # The runs are in PostgreSQL, not in a file store.
    with psycopg2.connect(host="127.0.0.1", port=5432, dbname=server["db_name"], user=server["db_user"],
                          password=server["db_password"]) as conn, conn.cursor() as cur:
        cur.execute("select name, status from runs where run_uuid = %s", (run.info.run_id,))
        assert cur.fetchall() == [("beta=1", "FINISHED")]
    conn.close()

    # A team member: created by the admin, may read (default_permission READ), may log runs into the pipeline's
    # experiment only once granted EDIT on it.
    from mlflow.server import get_app_client

    auth = get_app_client("basic-auth", tracking_uri=uri)
    member, member_password = "member", secrets.token_hex(8)
    auth.create_user(member, member_password)

    def login(name: str, secret: str) -> None:
        """Make the MLflow clients of this process send these credentials."""
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)

    login(member, member_password)
    assert client.get_run(run.info.run_id).info.run_name == "beta=1"
    with pytest.raises(mlflow.exceptions.MlflowException, match="403|ermission"):
        client.create_run(experiment.experiment_id)
    login(user, password)
    auth.grant_user_permission(member, "experiment", experiment.experiment_id, "EDIT")
    login(member, member_password)
    client.set_terminated(client.create_run(experiment.experiment_id, run_name="member").info.run_id)

    # A wrong password is refused by the client as well.
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-" + password)
    with pytest.raises(mlflow.exceptions.MlflowException, match="401|nauthori|not authenticated"):
        mlflow.MlflowClient(tracking_uri=uri).get_run(run.info.run_id)
