"""The workdir's owner file (clan_jax/workdir/lock.py) on a local disk, in this process.

Its rules on a bucket run in tests/test_cloud_storage.py through train.py.
"""
import json
import threading
import time

import pytest

from clan_jax.user_errors import UserError
from clan_jax.workdir import lock


@pytest.fixture
def fast(monkeypatch):
  """Renewals and staleness in fractions of a second."""
  monkeypatch.setattr(lock, 'RENEW_SECONDS', 0.2)
  monkeypatch.setattr(lock, 'STALE_SECONDS', 2.0)
  monkeypatch.setattr(lock, '_POLL_SECONDS', 0.1)


def _write_owner(workdir, host: str, renewals: int = 0) -> None:
  (workdir / lock.LOCK_FILE).write_text(json.dumps(
      {'host': host, 'pid': 1, 'started': None, 'since': 'then', 'renewals': renewals}))


def test_of_jobs_starting_together_exactly_one_takes_the_workdir(tmp_path):
  barrier, taken, refused = threading.Barrier(4), [], []

  def start():
    barrier.wait()
    try:
      taken.append(lock.acquire(str(tmp_path)))
    except UserError as e:
      refused.append(str(e))
  threads = [threading.Thread(target=start) for _ in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert len(taken) == 1 and len(refused) == 3
  assert all('is in use by another training run' in message for message in refused)
  lock.release(*taken[0])
  assert not (tmp_path / lock.LOCK_FILE).exists()


def test_the_owner_renews_the_file_and_removes_it_at_the_end(tmp_path, fast):
  del fast
  file, renewal = lock.acquire(str(tmp_path))
  time.sleep(1.0)
  owner = json.loads((tmp_path / lock.LOCK_FILE).read_text())
  assert owner['renewals'] >= 3
  lock.release(file, renewal)
  assert not (tmp_path / lock.LOCK_FILE).exists()


def test_another_hosts_job_that_renews_its_file_keeps_the_workdir(tmp_path, fast):
  del fast
  _write_owner(tmp_path, 'elsewhere')
  stop = threading.Event()

  def renew():
    renewals = 0
    while not stop.wait(0.3):
      renewals += 1
      _write_owner(tmp_path, 'elsewhere', renewals)
  renewer = threading.Thread(target=renew)
  renewer.start()
  try:
    started = time.monotonic()
    with pytest.raises(UserError, match=r'is in use by another training run \(pid 1 on host '
                       r'elsewhere, since then;'):
      lock.acquire(str(tmp_path))
    assert time.monotonic() - started < lock.STALE_SECONDS
  finally:
    stop.set()
    renewer.join()


def test_another_hosts_file_left_unchanged_is_taken_over(tmp_path, fast, capsys):
  del fast
  _write_owner(tmp_path, 'elsewhere')
  started = time.monotonic()
  file, renewal = lock.acquire(str(tmp_path))
  assert time.monotonic() - started >= lock.STALE_SECONDS
  assert f'Taking over {tmp_path}/lock.json: its run (pid 1 on elsewhere' in capsys.readouterr().err
  assert json.loads((tmp_path / lock.LOCK_FILE).read_text())['host'] != 'elsewhere'
  lock.release(file, renewal)


def test_an_owner_whose_file_was_taken_over_says_so(tmp_path, fast, capsys):
  del fast
  file, renewal = lock.acquire(str(tmp_path))
  _write_owner(tmp_path, 'elsewhere')  # as a job that found this one stalled would
  time.sleep(0.6)
  assert 'was taken over by another job' in capsys.readouterr().err
  lock.release(file, renewal)
  assert json.loads((tmp_path / lock.LOCK_FILE).read_text())['host'] == 'elsewhere'
