"""launch/*.sh: the exact gcloud commands of a multi-worker TPU job (dry run),
argument errors, shellcheck, and a real local sweep killed and restarted."""
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

import test_multiprocess as mp

pytestmark = pytest.mark.slow  # Subprocesses / whole runs (README runs all).

LAUNCH = mp.REPO / "launch"
SCRIPTS = ("local.sh", "tpu.sh", "sweep.sh")
ZONE = "us-central2-b"
WORKDIR = "gs://my-bucket/runs/cifar10/contrastive_da/3/1"
# A config string and a flag whose value needs quoting on the worker's shell.
MAIN = ["--config=configs/contrastive_da.py:dataset=cifar10,inlier_class=3,"
        "seed=1", "--config.eval.detectors=('kde', 'gde')"]


def script(name, *args, env=None, timeout=120):
  return subprocess.run([str(LAUNCH / name), *args], capture_output=True,
                        text=True, timeout=timeout, cwd=mp.REPO,
                        env={**os.environ, **(env or {})})


def commands(stdout) -> list[list[str]]:
  """The printed commands ("+ ..." lines) as argument lists."""
  return [shlex.split(line[2:]) for line in stdout.splitlines()
          if line.startswith("+ ")]


def remote_main_args(remote: str) -> list[str]:
  """The oneclass_jax.main arguments inside a worker's shell command."""
  words = shlex.split(remote)
  start = words.index("oneclass_jax.main") + 1
  assert words[start - 5:start] == ["&&", "ONECLASS_JAX_DISTRIBUTED=1",
                                    "~/oneclass_venv/bin/python", "-m",
                                    "oneclass_jax.main"]
  assert words[start - 7:start - 5] == ["cd", "~/oneclass_jax"]
  return words[start:words.index("2>&1")]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name):
  result = script(name, "--help")
  assert result.returncode == 0
  assert result.stdout.startswith(f"Usage: launch/{name}")
  assert "--dry_run" in result.stdout


@pytest.mark.parametrize("name,args,message", [
    ("tpu.sh", ["run", "--zone=z"], "--name is required"),
    ("tpu.sh", ["create", "--name=n", "--zone=z", "--accelerator=v9-8"],
     "no default --version for accelerator v9-8"),
    ("tpu.sh", ["run", "--name=n", "--zone=z", "--", "--config=c.py"],
     "run needs --workdir"),
    ("tpu.sh", ["--name=n", "--zone=z"], "no command given"),
    ("local.sh", ["--num_processes=0", "--", "--workdir=w"],
     "--num_processes must be >= 1"),
    ("local.sh", ["--gpus_per_process=1", "--cpu_devices=2", "--", "x"],
     "exclude each other"),
    ("local.sh", ["--bogus"], "unknown option --bogus"),
    ("sweep.sh", ["--jobs=/nonexistent", "--root=r"], "not found"),
])
def test_bad_arguments_fail_clearly(name, args, message):
  result = script(name, "--dry_run", *args)
  assert result.returncode == 2
  assert message in result.stderr


def test_tpu_dry_run_of_a_pod_slice_job(tmp_path):
  result = script(
      "tpu.sh", "all", "--name=oc-pod", f"--zone={ZONE}", "--project=proj",
      "--accelerator=v4-32", "--spot", f"--workdir={WORKDIR}",
      "--data=gs://my-bucket/tfds", "--dest=out", "--dry_run", "--", *MAIN,
      env={"TMPDIR": str(tmp_path)})
  assert result.returncode == 0, result.stderr
  where = [f"--zone={ZONE}", "--project=proj"]
  tarball = f"{tmp_path}/oneclass_jax-oc-pod.tgz"
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  cmds = commands(result.stdout)
  assert [c[:5] for c in cmds] == [
      tpu + ["create"], ["tar", "-czf", tarball, "--exclude=.git",
                         "--exclude=__pycache__"],
      tpu + ["scp"], tpu + ["ssh"], tpu + ["ssh"], ["mkdir", "-p", "out"],
      ["gcloud", "storage", "rsync", "-r", "--exclude=checkpoints/.*"],
      tpu + ["delete"]]
  create, tar, scp, install, train, mkdir, rsync, delete = cmds
  assert create == tpu + ["create", "oc-pod", *where,
                          "--accelerator-type=v4-32",
                          "--version=tpu-ubuntu2204-base", "--spot"]
  assert tar[-3:] == ["-C", str(mp.REPO), "."]
  assert scp == tpu + ["scp", tarball, "oc-pod:~/oneclass_jax.tgz", *where,
                       "--worker=all"]
  assert install[:-1] == tpu + ["ssh", "oc-pod", *where, "--worker=all"]
  steps = install[-1].removeprefix("--command=").split(" && ")
  assert "tar -xzf ~/oneclass_jax.tgz -C ~/oneclass_jax" in steps
  # Python >= 3.11 (setup.py) from uv, whatever the runtime's python3 is.
  assert "~/.local/bin/uv venv -q --clear --python 3.12 ~/oneclass_venv" in steps
  assert ("~/.local/bin/uv pip install -q --python ~/oneclass_venv/bin/python"
          " -U 'jax[tpu]'" in steps)
  assert ("~/.local/bin/uv pip install -q --python ~/oneclass_venv/bin/python"
          " -e ~/oneclass_jax gcsfs google-cloud-storage" in steps)
  for excluded in ("./runs", "./results", "*.whl"):
    assert f"--exclude={excluded}" in tar
  assert ("gcloud storage rsync -r gs://my-bucket/tfds ~/tensorflow_datasets"
          in steps)
  # Every worker runs the binary at once; JAX's runtime joins them.
  assert train[:-1] == tpu + ["ssh", "oc-pod", *where, "--worker=all"]
  remote = train[-1].removeprefix("--command=")
  assert remote.startswith("set -o pipefail; ")
  assert remote.endswith(" 2>&1 | tee ~/oneclass_jax_run.log")
  assert remote_main_args(remote) == [f"--workdir={WORKDIR}", *MAIN]
  assert rsync[-2:] == [WORKDIR, "out"]
  assert delete == tpu + ["delete", "oc-pod", *where, "--quiet"]


STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$HOME/calls.log"
"""


def _stub(path, body=""):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(STUB + body)
  path.chmod(0o755)


def test_tpu_install_commands_run_on_a_python_3_10_worker(tmp_path):
  """The install step's remote command, run here by bash against stubs of a
  worker whose only interpreter is python3 3.10 (tpu-ubuntu2204-base)."""
  result = script("tpu.sh", "install", "--name=oc", f"--zone={ZONE}",
                  "--dry_run", env={"TMPDIR": str(tmp_path)})
  assert result.returncode == 0, result.stderr
  remote = commands(result.stdout)[-1][-1].removeprefix("--command=")
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  home.mkdir()
  subprocess.run(["tar", "-czf", str(home / "oneclass_jax.tgz"), "-C",
                  str(mp.REPO), "setup.py"], check=True)
  # pip --user installs uv; uv venv makes a python that records its calls.
  _stub(bin_dir / "python3", 'if [[ "$*" == *"install"*"uv"* ]]; then\n'
        f'  mkdir -p "$HOME/.local/bin" && cp {bin_dir}/uv "$HOME/.local/bin/uv"'
        '\nfi\n')
  _stub(bin_dir / "uv", 'if [[ $1 == venv ]]; then\n'
        '  mkdir -p "${@: -1}/bin" && cp "$0" "${@: -1}/bin/python"\nfi\n')
  run = subprocess.run(["bash", "-c", remote], capture_output=True, text=True,
                       env={"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:"
                            "/bin"}, timeout=60)
  assert run.returncode == 0, run.stderr
  assert (home / "oneclass_jax" / "setup.py").exists()
  calls = (home / "calls.log").read_text().splitlines()
  assert calls == [
      "python3 -m pip install -q --user -U uv",
      f"uv venv -q --clear --python 3.12 {home}/oneclass_venv",
      f"uv pip install -q --python {home}/oneclass_venv/bin/python -U "
      "jax[tpu]",
      f"uv pip install -q --python {home}/oneclass_venv/bin/python -e "
      f"{home}/oneclass_jax gcsfs google-cloud-storage",
      "python -c import sys, jax, oneclass_jax; print(sys.version.split()[0],"
      " jax.__version__)"]


def test_tpu_detached_run_and_logs(tmp_path):
  result = script("tpu.sh", "run", "logs", "--detach", "--name=oc",
                  f"--zone={ZONE}", "--accelerator=v5litepod-16",
                  f"--workdir={WORKDIR}", "--worker=3", "--dry_run", "--",
                  *MAIN)
  assert result.returncode == 0, result.stderr
  train, logs = commands(result.stdout)
  words = shlex.split(train[-1].removeprefix("--command="))
  assert words[:3] == ["nohup", "bash", "-c"]
  assert words[4:] == [">", "~/oneclass_jax_run.log", "2>&1", "<",
                       "/dev/null", "&"]
  inner = shlex.split(words[3])
  assert inner[inner.index("oneclass_jax.main") + 1:] == [
      f"--workdir={WORKDIR}", *MAIN]
  assert logs[-2:] == ["--worker=3",
                       "--command=tail -n +1 -F ~/oneclass_jax_run.log"]


def test_local_dry_run_gives_each_process_its_part():
  result = script("local.sh", "--num_processes=2", "--gpus_per_process=4",
                  "--port=12355", "--heartbeat_timeout=30", "--dry_run", "--",
                  "--workdir=w")
  assert result.returncode == 0, result.stderr
  for i, cmd in enumerate(commands(result.stdout)):
    assert cmd == ["env", "ONECLASS_JAX_DISTRIBUTED=1",
                   "ONECLASS_JAX_COORDINATOR_ADDRESS=127.0.0.1:12355",
                   "ONECLASS_JAX_NUM_PROCESSES=2",
                   "ONECLASS_JAX_HEARTBEAT_TIMEOUT_S=30",
                   f"ONECLASS_JAX_PROCESS_ID={i}",
                   f"CUDA_VISIBLE_DEVICES={4 * i},{4 * i + 1},{4 * i + 2},"
                   f"{4 * i + 3}", "python3", "-m", "oneclass_jax.main",
                   "--workdir=w"]
  single = commands(script("local.sh", "--dry_run", "--", "--workdir=w").stdout)
  assert single == [["env", "python3", "-m", "oneclass_jax.main",
                     "--workdir=w"]]


def write_jobs(path, lines):
  path.write_text("# dataset class method seed\n" + "\n".join(lines) + "\n")
  return path


def test_sweep_dry_run_runs_only_unfinished_jobs(tmp_path):
  jobs = write_jobs(tmp_path / "jobs.txt", [
      "cifar10 0 contrastive_da 1", "cifar10 1 contrastive_da 1  # note",
      "", "cifar10 2 rotation 1", "cifar10 3 rotation 1"])
  root = tmp_path / "runs"
  done = root / "cifar10" / "contrastive_da" / "1" / "1"
  done.mkdir(parents=True)
  (done / "results.json").write_text(json.dumps({"auc": {"kde": 0.9}}))
  cut = root / "cifar10" / "rotation" / "2" / "1"  # Killed mid-write.
  cut.mkdir(parents=True)
  (cut / "results.json").write_text('{"auc": {"kd')
  result = script("sweep.sh", "--backend=tpu", f"--jobs={jobs}",
                  f"--root={root}", "--jobs_per_vm=2", "--name_prefix=sw",
                  f"--zone={ZONE}", "--accelerator=v4-16", "--spot",
                  f"--python={sys.executable}", "--dry_run", "--",
                  "--config.total_epochs=64")
  assert result.returncode == 0, result.stderr
  assert f"skip (finished): {done}" in result.stdout
  assert "3 of 4 jobs to run." in result.stdout
  cmds = commands(result.stdout)
  vms = [c[5] for c in cmds if c[4] == "create"]
  assert vms == ["sw-0", "sw-1"]  # 3 jobs, 2 per VM.
  runs = [(c[5], remote_main_args(c[-1].removeprefix("--command=")))
          for c in cmds if c[4] == "ssh" and "oneclass_jax.main" in c[-1]]
  expected = [("sw-0", "contrastive_da", 0), ("sw-0", "rotation", 2),
              ("sw-1", "rotation", 3)]
  assert runs == [(vm, [f"--workdir={root}/cifar10/{m}/{c}/1",
                        f"--config=configs/{m}.py:dataset=cifar10,"
                        f"inlier_class={c},seed=1",
                        "--config.total_epochs=64"])
                  for vm, m, c in expected]
  assert [c[5] for c in cmds if c[4] == "delete"] == ["sw-0", "sw-1"]


def test_sweep_finds_every_unfinished_job_in_a_long_list(tmp_path):
  """More unfinished workdirs than a pipe holds (> 64 KiB of paths): the old
  `printf | grep -q` check under pipefail called the first jobs finished."""
  root = tmp_path / ("runs_" + "r" * 150)
  lines = [f"cifar10 {c} rotation {s}" for s in range(40) for c in range(10)]
  jobs = write_jobs(tmp_path / "jobs.txt", lines)
  done = root / "cifar10" / "rotation" / "9" / "39"
  done.mkdir(parents=True)
  (done / "results.json").write_text(json.dumps({"auc": {"kde": 0.9}}))
  assert len(lines) * len(str(done)) > 64 * 1024
  result = script("sweep.sh", "--backend=tpu", f"--jobs={jobs}",
                  f"--root={root}", "--jobs_per_vm=400", "--name_prefix=sw",
                  f"--zone={ZONE}", "--accelerator=v4-8",
                  f"--python={sys.executable}", "--dry_run")
  assert result.returncode == 0, result.stderr
  assert result.stdout.count("skip (finished)") == 1
  assert f"skip (finished): {done}\n" in result.stdout
  assert "399 of 400 jobs to run." in result.stdout


def test_sweep_stops_when_the_results_check_fails(tmp_path):
  jobs = write_jobs(tmp_path / "jobs.txt", ["cifar10 0 rotation 0"])
  result = script("sweep.sh", f"--jobs={jobs}", f"--root={tmp_path}",
                  "--python=false", "--dry_run")
  assert result.returncode != 0
  assert "could not check which jobs are finished" in result.stderr
  assert "jobs to run" not in result.stdout


def test_shellcheck_is_clean():
  if shutil.which("shellcheck") is None:
    pytest.fail("shellcheck is not installed: apt-get install -y shellcheck")
  result = subprocess.run(
      ["shellcheck", "-x", *(f"launch/{name}" for name in SCRIPTS),
       "launch/common.sh"], cwd=mp.REPO, capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 0, result.stdout


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return mp.make_tiny(tmp_path_factory)


def test_sweep_killed_and_restarted_redoes_only_unfinished_jobs(tiny,
                                                                tmp_path):
  jobs = write_jobs(tmp_path / "jobs.txt", ["image_folder 0 contrastive 0",
                                            "image_folder 1 contrastive 0"])
  root = tmp_path / "runs"
  first, second = (root / "image_folder" / "contrastive" / c / "0"
                   for c in ("0", "1"))
  cmd = [str(LAUNCH / "sweep.sh"), f"--jobs={jobs}", f"--root={root}",
         "--cpu_devices=2", f"--python={sys.executable}", "--",
         *mp.config_flags(tiny)]

  def start(log):
    with open(log, "w") as out:
      return subprocess.Popen(cmd, cwd=mp.REPO, env=mp.run_env(tiny),
                              stdout=out, stderr=subprocess.STDOUT,
                              start_new_session=True)

  sweep = start(tmp_path / "sweep1.log")
  mp.wait_for(lambda: mp.checkpoint_steps(second), "job 2's first checkpoint",
              sweep)
  os.killpg(sweep.pid, signal.SIGKILL)  # The machine dies: sweep and job.
  sweep.wait(timeout=mp.EXIT_TIMEOUT_S)
  finished_results = (first / "results.json").read_text()
  assert not (second / "results.json").exists()
  resume_from = mp.checkpoint_steps(second)[-1]

  sweep = start(tmp_path / "sweep2.log")
  assert sweep.wait(timeout=mp.RUN_TIMEOUT_S) == 0
  log = (tmp_path / "sweep2.log").read_text()
  assert f"skip (finished): {first}" in log
  assert "1 of 2 jobs to run." in log
  assert f"Resumed from step {resume_from}" in log
  assert (first / "results.json").read_text() == finished_results
  assert json.loads((second / "results.json").read_text())["step"] == mp.STEPS
