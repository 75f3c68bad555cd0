"""`provision env` commands (Click layer only): create, list, export, remove."""
from __future__ import annotations

from pathlib import Path

import click

from provisioner.cli import ui
from provisioner.cli.app import App, dry_run_option, json_option, pass_app

#: Kept in step with provisioner.env (not imported here: `provision --help` stays light).
BACKENDS = ("auto", "conda", "mamba", "micromamba", "venv")
INSTALLERS = ("auto", "pip", "uv")
#: `env list` colours a status in a terminal (the word stays: NO_COLOR and pipes get it plain).
STATUS_STYLES = {"complete": "green", "building": "yellow", "in progress": "yellow", "broken": "red",
                 "missing": "red"}


@click.group("env")
def env_group() -> None:
    """Build, list, export and remove the torch + bitsandbytes environments provision creates."""


@env_group.command("create")
@click.option("--name", metavar="NAME", envvar="PROVISION_ENV_NAME", show_envvar=True,
              help="Environment name: a conda env name, or a venv under the provision data dir "
                   "[default: llm].")
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path),
              envvar="PROVISION_ENV_PREFIX", show_envvar=True, help="Build the environment at PATH.")
@click.option("--profile", metavar="NAME|auto", default="auto", show_default=True,
              envvar="PROVISION_PROFILE", show_envvar=True,
              help="Profile to build; auto chooses from the driver, the GPUs and the linked toolkit.")
@click.option("--cuda", metavar="VERSION", envvar="PROVISION_CUDA", show_envvar=True,
              help="Build the profile of this CUDA line (12.6, cu126); refused if the machine shows it cannot run it.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              envvar="PROVISION_BACKEND", show_envvar=True,
              help="auto: conda, mamba or micromamba when on PATH, else a venv.")
@click.option("--installer", type=click.Choice(INSTALLERS), default="auto", show_default=True,
              envvar="PROVISION_INSTALLER", show_envvar=True,
              help="auto: `uv pip` when uv is on PATH, else the environment's pip.")
@click.option("--python", "python_version", metavar="X.Y", help="Python version [default: the profile's].")
@click.option("--torch", "torch_version", metavar="VERSION", envvar="PROVISION_TORCH", show_envvar=True,
              help="Override the profile's torch pin (the profile's build label is kept).")
@click.option("--index-url", metavar="URL", envvar="PROVISION_INDEX_URL", show_envvar=True,
              help="Where torch comes from [default: the profile's index].")
@click.option("--extra-index-url", metavar="URL", multiple=True,
              help="Another index for every install step (repeatable).")
@click.option("--find-links", metavar="DIR|URL", multiple=True,
              help="A wheel folder for every install step (repeatable); a folder holding the exact "
                   "torch build is used instead of the torch index.")
@click.option("--channel", "-c", "channels", metavar="CHANNEL", multiple=True,
              help="conda channel (repeatable); replaces the configured channels.")
@click.option("--allow-insecure-index", is_flag=True, help="Accept http:// index URLs.")
@click.option("--from-lock", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Rebuild exactly what a lock file (provision env export) records.")
@click.option("--force", is_flag=True,
              help="Replace an environment provision built from another profile, or left half-built.")
@click.option("--bundle", type=click.Path(path_type=Path), metavar="PATH",
              help="Build offline from a bundle (`provision bundle create`): verified first, no index.")
@dry_run_option
@json_option
@pass_app
def env_create(app: App, name: str | None, prefix: Path | None, profile: str, cuda: str | None,
               backend: str, installer: str, python_version: str | None, torch_version: str | None,
               index_url: str | None, extra_index_url: tuple[str, ...], find_links: tuple[str, ...],
               channels: tuple[str, ...], allow_insecure_index: bool, from_lock: Path | None,
               force: bool, dry_run: bool, bundle: Path | None = None) -> None:
    """Build (or confirm up to date) the environment for this machine, verify it, and lock it."""
    from provisioner import env as envmod

    if bundle is not None:
        from provisioner.cli.bundle import env_create_from_bundle

        return env_create_from_bundle(app, bundle, name=name, prefix=prefix, backend=backend, installer=installer,
                                      force=force, dry_run=dry_run, profile=profile, cuda=cuda, python=python_version,
                                      torch=torch_version, index_url=index_url, extra_index_url=extra_index_url,
                                      find_links=find_links, channel=channels, from_lock=from_lock)

    options = envmod.CreateOptions(
        name=name, prefix=prefix, profile=profile, cuda=cuda, backend=backend, python=python_version,
        torch=torch_version, index_url=index_url, extra_index_urls=extra_index_url,
        find_links=find_links, channels=channels, installer=installer,
        allow_insecure_index=allow_insecure_index, from_lock=from_lock, force=force, dry_run=dry_run)
    plan = envmod.plan_create(options, root=app.root, environ=app.environ)
    for line in plan.warnings:
        app.info(f"warning: {line}")
    app.echo(plan.describe())
    if dry_run:
        if app.json:
            app.emit_json({"version": 1, "status": "planned", "plan": plan.to_dict()})
        plan.require_runnable()
        return
    result = envmod.apply_create(plan, environ=app.environ, progress=app.info, status=ui.spinners(app))
    if app.json:
        app.emit_json({"version": 1, **result.to_dict(), "plan": plan.to_dict()})
        return
    if result.status == "created":
        app.echo(f"Created {result.prefix} (profile {result.profile}) in {result.seconds:.0f} s; "
                 f"lock: {result.lock_path}")
    activate = (f"conda activate {plan.location.conda_name}" if plan.location.conda_name
                else f"conda activate {result.prefix}" if plan.backend != "venv"
                else f"source {result.prefix}/bin/activate")
    app.echo(f"Use it: {activate}   (check it: provision verify --env {result.prefix})")


@env_group.command("list")
@json_option
@pass_app
def env_list(app: App) -> None:
    """The environments provision created, with profile, torch build and status."""
    from provisioner import env as envmod
    from provisioner import report

    envs = envmod.list_envs(app.environ)
    if app.json:
        app.emit_json({"version": 1, "envs": [e.to_dict() for e in envs]})
        return
    if not envs:
        app.echo("No environments yet; create one with `provision env create`.")
        return
    from rich.text import Text

    rows: list[list[str | Text]] = [
        [e.name, e.profile or "?", e.torch or "?", Text(e.status, style=STATUS_STYLES.get(e.status, "")), str(e.prefix)]
        for e in envs]
    ui.show(app, report.rich_table(rows, ["NAME", "PROFILE", "TORCH", "STATUS", "PREFIX"]))


@env_group.command("remove")
@click.argument("target", metavar="NAME|PATH")
@dry_run_option
@json_option
@pass_app
def env_remove(app: App, target: str, dry_run: bool) -> None:
    """Delete an environment provision created (never one it did not)."""
    from provisioner import env as envmod

    plan = envmod.plan_remove(target, app.environ)
    app.echo(plan.describe())
    if not dry_run:
        envmod.apply_remove(plan, environ=app.environ)
        app.echo(f"Removed {plan.prefix}")
    if app.json:
        app.emit_json({"version": 1, "status": "planned" if dry_run else "removed", **plan.to_dict()})


@env_group.command("export")
@click.argument("target", metavar="[NAME|PATH]", required=False)
@click.option("--prefix", type=click.Path(file_okay=False, path_type=Path), help="The environment at PATH.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the lock to FILE instead of stdout.")
@json_option
@pass_app
def env_export(app: App, target: str | None, prefix: Path | None, output: Path | None) -> None:
    """Print (or write) an environment's lock: profile, machine facts, exact versions, indexes.

    With --output FILE its pylock.toml (every wheel's URL and sha256) is written beside FILE as
    pylock.NAME.toml; `env create --from-lock FILE` installs from it. The lock is JSON already; with --json and
    --output, stdout gets {"version", "output", "lock", "pylock"}.
    """
    import json

    from provisioner import env as envmod
    from provisioner.env import lock as lockmod
    from provisioner.errors import ProvisionError, UsageError

    if target and prefix:
        raise UsageError("give the environment once: NAME|PATH or --prefix",
                         hint="e.g. `provision env export llm` or `provision env export --prefix PATH`")
    path, doc = envmod.export_lock(str(prefix.absolute()) if prefix else target, app.environ)
    if output is None:
        click.echo(json.dumps(lockmod.exported(doc, path.parent), indent=2))
        return
    try:
        written = lockmod.export_to(doc, path.parent, output)
    except OSError as e:
        raise ProvisionError(f"cannot write {output}: {e.strerror or e}",
                             hint="choose a writable path for --output") from None
    app.info(f"wrote {' and '.join(str(w) for w in written)} (from {path})")
    if app.json:
        app.emit_json({"version": 1, "output": str(output), "lock": str(path),
                       "pylock": str(written[1]) if len(written) > 1 else None})


COMMANDS: list[click.Command] = [env_group]
