"""Python environments for the model: which one a command works on, how provision builds, records,
locks, lists and removes them, and the checks that judge one.

    target.py    which environment a command means (--env NAME|PATH, the active one)
    probe.py     run the probe script with that environment's own Python
    choose.py    which profile fits the machine's facts
    backends.py  conda / mamba / micromamba / venv, pip or uv
    sources.py   indexes, local wheel folders, pip's configuration, pinned builds
    record.py    the record inside an environment, the registry, status, list
    plan.py      plan_create: every decision, changes nothing
    create.py    apply_create: run the plan, verify, record and lock
    remove.py    remove and export
    lock.py      the lock file
    checks.py    env.* checks on a probe's facts

The names below are the package's public surface, so callers write `env.plan_create(...)`.
"""
from provisioner.env.create import TORCH_FAMILY, EnvResult, apply_create, create_env, env_checks
from provisioner.env.plan import CreateOptions, CreatePlan, decide_existing, plan_create
from provisioner.env.record import (DEFAULT_NAME, RECORD_NAME, RECORD_VERSION, EnvInfo, default_prefix,
                                    env_status, is_building_now, list_envs, read_record, read_registry,
                                    record_path, registry_path, resolve_env, update_registry)
from provisioner.env.remove import RemovePlan, apply, apply_remove, export_lock, plan_remove
from provisioner.env.sources import check_url, find_local_wheels, pin_build, pip_config_find_links, pip_find_links

__all__ = [
    "TORCH_FAMILY", "CreateOptions", "CreatePlan", "EnvResult", "apply_create", "create_env", "env_checks",
    "plan_create", "decide_existing", "DEFAULT_NAME", "RECORD_NAME", "RECORD_VERSION", "EnvInfo", "default_prefix",
    "env_status", "is_building_now", "list_envs", "read_record", "read_registry", "record_path",
    "registry_path", "resolve_env", "update_registry", "RemovePlan", "apply", "apply_remove",
    "export_lock", "plan_remove", "check_url", "find_local_wheels", "pin_build", "pip_config_find_links",
    "pip_find_links",
]
