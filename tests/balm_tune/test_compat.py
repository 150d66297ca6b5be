"""The Ray and Optuna internals balm_tune relies on (balm_tune.compat) still exist in the installed
versions: a Ray or Optuna upgrade that moves one fails here, naming it, not somewhere in a search."""

import importlib
import os

import optuna
import pytest
import ray

from balm_tune import compat


@pytest.mark.parametrize(("qualified", "attributes"), list(compat.PRIVATE_HOOKS.items()))
def test_the_private_hooks_balm_tune_overrides_are_still_there(qualified, attributes):
    module, name = qualified.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    instance_attributes = set()
    if "_trial_logging_futures" in attributes:  # set in __init__, not a class attribute
        instance_attributes = set(vars(cls(project="p", mode="offline")))
    missing = [a for a in attributes if not hasattr(cls, a) and a not in instance_attributes]
    assert not missing, f"Ray {ray.__version__}: {qualified} no longer has {missing}; update balm_tune.compat"


def test_rays_internals_answer_as_balm_tune_reads_them():
    assert compat.ray_cpu_count() >= 1
    with compat.loopback_node():
        from ray._private import ray_constants

        assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert compat.bootstrap_address("127.0.0.1:6379").endswith(":6379")  # HOST:PORT, the host as Ray resolves it
    assert compat.autoscaler_cluster_config() is None  # no Ray connected


def test_under_the_loopback_environment_another_process_keeps_a_127_address():
    import subprocess
    import sys

    code = "from balm_tune.compat import bootstrap_address; print(bootstrap_address('127.0.0.1:6379'))"
    env = {**os.environ, **compat.loopback_environment()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "127.0.0.1:6379"  # joins a loopback-only Ray (balm_tune.campaign --concurrent)


def test_an_optuna_trial_has_the_storage_id_its_handle_takes():
    study = optuna.create_study()
    asked = study.ask()
    frozen = study.trials[0]
    assert compat.storage_id(frozen) == compat.storage_id(asked)
    optuna.Trial(study, compat.storage_id(frozen)).set_user_attr("lost", True)
    assert study.trials[0].user_attrs == {"lost": True}
