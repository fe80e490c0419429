"""`python -m byol_jax.study --launcher=slurm` (byol_jax/study/slurm.py) against a real SLURM: the one-node cluster
on localhost that scripts/cluster/slurm_local.sh starts (.ci/run starts it once, before the suite).

Without a reachable SLURM (a laptop) the cluster tests are skipped with the reason; where CI=1 or
BYOL_JAX_REQUIRE_SLURM=1 (.ci/run sets it) they fail instead. Studies: configs/study/tiny.py, one seed. The tests
whose jobs train, and the one that waits out SLURM's connection retries, are `slow`."""
import json
import os
import shutil
import subprocess
import sys
import time

import chex
import pytest

from byol_jax.study import launch, runner, slurm
from study_helpers import tiny_study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = os.environ.get('BYOL_JAX_REQUIRE_SLURM') == '1' or os.environ.get('CI', '').lower() in ('1', 'true')
FAST = ['--slurm_poll=1', '--slurm_cpus=1', '--slurm_time=20']  # 1 CPU per job: the 2-core node runs two at once


def _unreachable() -> str | None:
  """Why no SLURM can take jobs here, or None."""
  if shutil.which('sinfo') is None:
    return 'no SLURM reachable: sinfo not found (scripts/cluster/slurm_local.sh starts a one-node cluster)'
  try:
    proc = subprocess.run(['sinfo', '-h', '-o', '%T'], capture_output=True, text=True, timeout=30)
  except subprocess.TimeoutExpired:
    return 'no SLURM reachable: sinfo did not answer in 30 s'
  if proc.returncode:
    return f'no SLURM reachable: sinfo failed: {proc.stderr.strip()}'
  if not any(s.strip().startswith(('idle', 'mixed', 'allocated')) for s in proc.stdout.split()):
    return f'SLURM has no node up (sinfo: {proc.stdout.split()})'
  return None


@pytest.fixture(scope='module')
def cluster():
  reason = _unreachable()
  if reason:
    if REQUIRED:
      pytest.fail(f'{reason}; CI needs it (.ci/run starts it with scripts/cluster/slurm_local.sh)')
    pytest.skip(reason)


def study_cli(workdir, *args, env=None):
  cmd = [sys.executable, '-m', 'byol_jax.study', '--config=configs/study/tiny.py', f'--workdir={workdir}',
         '--config.seeds=1', '--launcher=slurm', *args]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _run(workdir, *args, timeout=600, env=None):
  proc = study_cli(workdir, *args, env=env)
  out = proc.communicate(timeout=timeout)[0]
  return proc.returncode, out


def _lines(text):
  return [l for l in text.strip().splitlines() if l.strip()]


# ------------------------------------------------------------------------------------------ without a cluster
def test_a_job_runs_byol_jax_main_on_its_run_directory_and_sbatch_options_are_checked(tmp_path):
  job = slurm.RunJob(str(tmp_path / 'mlp' / 'seed0'), 'mlp/seed0')
  assert job.path == str(tmp_path / 'mlp' / 'seed0')
  assert launch.main_command(job.path)[1:] == [
      '-m', 'byol_jax.main', f'--config={ROOT}/configs/run.py:{job.path}', f'--workdir={job.path}']
  assert slurm.sbatch_args(['qos=high', '--account=lab', 'exclusive', 'mail-type=END']) == {
      'qos': 'high', 'account': 'lab', 'exclusive': True, 'mail_type': 'END'}
  with pytest.raises(slurm.SlurmError, match='write sbatch options as key=value'):
    slurm.sbatch_args(['=x'])
  with pytest.raises(slurm.SlurmError, match='--slurm_nodes=0 must be >= 1'):
    slurm.Options(nodes=0).check()


def test_no_slurm_reachable_is_one_line(tmp_path):
  env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no sinfo on the PATH
  code, out = _run(tmp_path / 's', env=env, timeout=300)
  assert code == 2 and _lines(out) == [
      "error: study tiny.py: no SLURM reachable: `sinfo` not found (install SLURM's client tools on this machine, "
      'or run the study with --launcher=local)'], out
  assert not (tmp_path / 's').exists()


# ------------------------------------------------------------------------------------------ on the cluster
def test_unknown_partition_is_one_line(cluster, tmp_path):
  code, out = _run(tmp_path / 's', '--slurm_partition=gpu_nowhere', timeout=300)
  assert code == 2 and _lines(out) == [
      "error: study tiny.py: unknown SLURM partition 'gpu_nowhere'; this cluster has: debug (default)"], out
  assert not (tmp_path / 's').exists()


@pytest.mark.slow  # waits out the client's retries (~10 s, idle)
def test_controller_down_is_one_line(cluster, tmp_path, monkeypatch):
  """sinfo present, slurmctld not answering (here: a slurm.conf naming a port nobody listens on)."""
  conf = open(os.environ.get('SLURM_CONF', '/etc/slurm/slurm.conf')).read()
  (tmp_path / 'slurm.conf').write_text(conf.replace('SlurmctldHost=', 'SlurmctldPort=6999\nSlurmctldHost=', 1))
  monkeypatch.setenv('SLURM_CONF', str(tmp_path / 'slurm.conf'))
  with pytest.raises(slurm.SlurmError) as e:
    slurm.check_cluster('')
  assert str(e.value) == ('no SLURM reachable: `sinfo -h -o %P` failed: slurm_load_partitions: Unable to contact '
                          'slurm controller (connect failure)')


@pytest.mark.slow  # two studies trained (SLURM's and the local one)
def test_slurm_study_equals_the_local_study(cluster, tmp_path):
  """--no_wait submits one job array and returns; a second call does not submit the runs again; a waiting call
  collects. The results equal those of the same study run here, one run after another (the in-process launcher)."""
  workdir = tmp_path / 'slurm'
  code, out = _run(workdir, '--no_wait', *FAST)
  assert code == 0 and 'submitted 2 runs to SLURM as job ' in out and 'mlp/seed0, none/seed0' in out, out
  assert '2 runs in SLURM; run the same command again to collect them' in out
  jobs = slurm.read_jobs(str(workdir))
  array = jobs['mlp:0']['job_id'].split('_')[0]
  assert jobs == {'mlp:0': {'attempts': 1, 'job_id': f'{array}_0', 'log': f'{workdir}/.slurm/{array}_0_0_log.err'},
                  'none:0': {'attempts': 1, 'job_id': f'{array}_1', 'log': f'{workdir}/.slurm/{array}_1_0_log.err'}}
  # The same study here, while the jobs run (the reference).
  local = str(tmp_path / 'local')
  runner.run_study(tiny_study(seeds=1), local, out=open(os.devnull, 'w'))
  # The jobs may still be queued or running ("... not submitted again") or done: either way nothing is submitted.
  code, out = _run(workdir, '--no_wait', *FAST)
  assert code == 0 and ' to SLURM as job ' not in out and slurm.read_jobs(str(workdir)) == jobs, out
  code, out = _run(workdir, *FAST)
  assert code == 0 and f'results: {workdir}/results.md' in out, out
  got = json.load(open(workdir / 'results.json'))['rows']
  ref = json.load(open(os.path.join(local, 'results.json')))['rows']
  for row in ('mlp', 'none'):
    assert got[row]['seeds_done'] == [0]
    for key in ('linear_probe_top1', 'knn_top1', 'initial_linear_probe_top1'):  # accuracies: exactly
      assert got[row][key]['per_seed'] == ref[row][key]['per_seed'], (row, key)
    for key in ('z_std_times_sqrt_d', 'z_effective_rank', 'feature_effective_rank'):
      chex.assert_trees_all_close(got[row][key]['per_seed'], ref[row][key]['per_seed'], atol=1e-6)
  assert os.path.isdir(workdir / 'none' / 'seed0' / 'checkpoints')  # ordinary run folders


@pytest.mark.slow  # a 300-step run, cancelled and resumed
def test_cancelled_job_is_resubmitted_and_the_run_resumes(cluster, tmp_path):
  """scancel in the middle of training: the run saves a checkpoint (SIGTERM), the job ends CANCELLED, the launcher
  submits the run again and the new job resumes it from the checkpoint."""
  workdir = tmp_path / 's'
  run_path = workdir / 'none' / 'seed0'
  proc = study_cli(workdir, '--rows=none', '--config.base.train.steps=300', '--config.base.train.checkpoint_every=100',
                   *FAST)
  t0, cancelled = time.time(), None
  while proc.poll() is None and time.time() - t0 < 400 and cancelled is None:
    metrics = run_path / 'metrics.jsonl'
    if metrics.exists() and '"loss"' in metrics.read_text():  # training has begun: 300 steps left to go
      cancelled = slurm.read_jobs(str(workdir))['none:0']['job_id']
      subprocess.run(['scancel', cancelled], check=True)
    time.sleep(0.2)
  out = proc.communicate(timeout=600)[0]
  assert cancelled and proc.returncode == 0, out
  assert (f'none/seed0: SLURM job {cancelled} ended CANCELLED before the run finished; submitting it again '
          '(attempt 2 of 4)') in out, out
  entry = slurm.read_jobs(str(workdir))['none:0']
  assert entry['attempts'] == 2 and entry['job_id'] != cancelled
  log = (run_path / 'log.txt').read_text()
  assert 'SIGTERM at step' in log and 'Resuming from step' in log, log
  summary = json.load(open(run_path / 'summary.json'))
  assert summary['steps'] == 300
  assert json.load(open(workdir / 'results.json'))['rows']['none']['seeds_done'] == [0]


@pytest.mark.slow  # a SLURM job that starts byol_jax.main
def test_job_that_fails_for_good_names_its_log(cluster, tmp_path):
  """A run that cannot start (its data is missing) fails its job; with no retries left the command says so in one
  line with the log's path, exit 2."""
  workdir = tmp_path / 's'
  code, out = _run(workdir, '--rows=none', '--slurm_max_retries=0', '--config.base.data.name=fashion_mnist',
                   '--config.base.data.path=/nonexistent/fmnist', *FAST)
  errors = [l for l in _lines(out) if l.startswith('error:')]
  assert code == 2 and len(errors) == 1, out
  job_log = slurm.read_jobs(str(workdir))['none:0']['log']
  log = workdir / 'none' / 'seed0' / 'log.txt'
  assert errors[0].startswith('error: study tiny.py: run none/seed0 failed for good: SLURM job ') and \
      errors[0].endswith(f"ended FAILED after 1 attempt (--slurm_max_retries=0); log: {log} (the job's: "
                         f'{job_log})'), errors[0]
  assert '/nonexistent/fmnist' in log.read_text() and 'exited with status 2' in open(job_log).read()
