"""`up --bundle`: the profile and environment stages when a bundle decides them (no index, no hub)."""
from __future__ import annotations

from typing import Any

from provisioner.up.records import fingerprint
from provisioner.up.types import StageOutcome


def choose_profile(up: Any, name: str) -> StageOutcome:
    """The bundle's profile, as its lock pins it; refused (the stage fails) where this machine cannot
    run that build. `up.o.bundle` is the folder `provision up --bundle` verified before the plan, so
    this reads its manifest and lock without hashing every file again (the environment stage verifies
    it once more, right before installing). `up` is the runner (stages.Run; not imported here: stages
    imports this module)."""
    from provisioner.bundle import install

    assert up.state.machine is not None and up.o.bundle is not None
    manifest, profile, problems = install.bundle_profile(up.o.bundle, up.state.machine)
    if problems:
        raise up.fail(name, "", f"bundle {up.o.bundle} is a {manifest.variant} build of profile "
                      f"{manifest.profile} that this machine cannot run: " + "; ".join(problems),
                      "make a bundle for this machine's profile (`provision verify` here says which)")
    up.state.profile = profile
    return StageOutcome(name, "done", f"{manifest.profile}: from bundle {up.o.bundle} "
                        f"({' '.join(manifest.torch)}, Python {manifest.python}, {manifest.platform})",
                        {"profile": manifest.profile, "bundle": str(up.o.bundle), "manifest_sha256": manifest.sha256})


def environment(up: Any, name: str, prefix: Any) -> StageOutcome:
    """The environment from the bundle's lock, verified again right before anything is installed."""
    from provisioner.bundle import install

    bundle = install.open_bundle(up.o.bundle, up.environ)
    inputs = up.state.inputs[name] = fingerprint(str(prefix), bundle.manifest.sha256, up.o.backend)
    result = install.create_env(bundle, root=up.root, environ=up.environ, facts=up.state.machine, prefix=prefix,
                                backend=up.o.backend, repair=True, progress=up.say)
    up.state.env = result
    ran = result.status != "up-to-date"
    up.did_work |= ran
    up.records.done(name, inputs, {"prefix": str(result.prefix), "python": str(result.python)})
    return StageOutcome(name, "ran" if ran else "done",
                        f"{result.prefix} ({result.status} from bundle {bundle.source}, profile {result.profile})",
                        {"prefix": str(result.prefix), "python": str(result.python), "status": result.status,
                         "bundle": str(bundle.source)})
