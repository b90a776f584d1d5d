"""stable-baselines3's own VecEnv tests, run against Ploutos' VecEnvs.

The installed version's sdist is fetched from the package registry at test time (its tests are not
in the wheel, and are not copied here); ``tests/test_vec_envs.py`` from it runs in a subprocess
whose ``conftest.py`` puts :class:`~ploutos.env.batched.BatchedVecEnv` where SB3 has ``DummyVecEnv``
and :class:`~ploutos.env.vec.ShmVecEnv` where it has ``SubprocVecEnv`` before the test module is
imported, so every case the file runs on those two classes runs on ours. Skipped cases are listed
with their reasons.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest

CONFTEST = '''
"""Written by tests/test_sb3_vec_envs.py: SB3's VecEnv classes replaced by Ploutos' before import."""
import os

import stable_baselines3.common.vec_env as vec_env_module

from ploutos.env.batched import BatchedVecEnv
from ploutos.env.vec import ShmVecEnv

PER_WORKER = int(os.environ["PLOUTOS_SB3_ENVS_PER_WORKER"])


class ShmVecEnvAsSubproc(ShmVecEnv):
    """SubprocVecEnv's signature: ``start_method`` is the multiprocessing context. By default "fork":
    a forkserver or spawned worker imports this test module, hence torch, for every vec env (5 s
    each); the cases that name a start method still get it."""

    def __init__(self, env_fns, start_method=None):
        super().__init__(env_fns, envs_per_worker=PER_WORKER, context=start_method or "fork")


vec_env_module.DummyVecEnv = BatchedVecEnv
vec_env_module.SubprocVecEnv = ShmVecEnvAsSubproc
'''


@pytest.fixture(scope="session")
def sb3_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    version = metadata.version("stable-baselines3")
    root = tmp_path_factory.mktemp("sb3")
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
         "-q", "-d", str(root), f"stable-baselines3=={version}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert fetched.returncode == 0, f"pip download of the stable-baselines3 {version} sdist failed:\n{fetched.stderr}"
    sdist = next(root.glob("stable_baselines3-*.tar.gz"))
    suite = root / "suite"
    suite.mkdir()
    with tarfile.open(sdist) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("/tests/test_vec_envs.py"))
        (suite / "test_vec_envs.py").write_bytes(archive.extractfile(member).read())
    (suite / "conftest.py").write_text(CONFTEST)
    return suite


@pytest.mark.parametrize("envs_per_worker", [2])  # SB3 uses 3 or 4 envs: workers of 2 and of 1 env
def test_sb3_vec_env_tests_pass_on_ploutos_vec_envs(sb3_suite: Path, envs_per_worker: int):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
         str(sb3_suite / "test_vec_envs.py")],
        cwd=sb3_suite, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PLOUTOS_SB3_ENVS_PER_WORKER": str(envs_per_worker)},
    )  # fmt: skip
    summary = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED") or " passed" in line]
    print(f"stable-baselines3 {metadata.version('stable-baselines3')} test_vec_envs.py, envs_per_worker "
          f"{envs_per_worker}:", *summary, sep="\n  ")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
