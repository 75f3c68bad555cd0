"""`provision bundle` commands (Click layer only): create, verify, list."""
from __future__ import annotations

from pathlib import Path

import click

from provisioner.cli import ui
from provisioner.cli.app import App, dry_run_option, json_option, pass_app
from provisioner.units import human_bytes

JSON_VERSION = 1


@click.group("bundle")
def bundle_group() -> None:
    """Make one folder or tar with all an offline machine needs for `up`; verify and list one."""


@bundle_group.command("create")
@click.option("--profile", required=True, metavar="NAME", envvar="PROVISION_PROFILE", show_envvar=True,
              help="The target's profile (cpu, cu126, ...); `provision verify` on the target says which fits.")
@click.option("--model", default=None, metavar="MODEL",
              help="A hub id (downloaded as `model download` does) or a local model folder to include.")
@click.option("--revision", default=None, help="Hub revision of --model (default: main).")
@click.option("--python", "python_version", default=None, metavar="X.Y",
              help="The target's Python [default: the profile's].")
@click.option("--platform", default=None, metavar="TAG",
              help="The target's wheel platform, e.g. manylinux_2_28_x86_64 [default: this machine's].")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, metavar="DIR|FILE.tar",
              help="Where to write the bundle: a folder, or a tar (written at the end) "
                   "[default: ./provision-bundle-PROFILE-pyX.Y-PLATFORM].")
@click.option("--torch", "torch_version", default=None, metavar="VERSION", help="Override the profile's torch pin.")
@click.option("--index-url", default=None, metavar="URL", help="Where torch comes from [default: the profile's index].")
@click.option("--extra-index-url", multiple=True, metavar="URL", help="Another index (repeatable).")
@click.option("--find-links", multiple=True, metavar="DIR|URL", help="A wheel folder (repeatable).")
@click.option("--allow-insecure-index", is_flag=True, help="Accept http:// index URLs.")
@click.option("--endpoint", default=None, metavar="URL", help="Hub endpoint (a mirror) for --model.")
@click.option("--mirror", default=None, metavar="NAME", help="A known hub mirror by name for --model.")
@dry_run_option
@json_option
@pass_app
def bundle_create(app: App, profile: str, model: str | None, revision: str | None, python_version: str | None,
                  platform: str | None, output: Path | None, torch_version: str | None, index_url: str | None,
                  extra_index_url: tuple[str, ...], find_links: tuple[str, ...], allow_insecure_index: bool,
                  endpoint: str | None, mirror: str | None, dry_run: bool) -> None:
    """Resolve the profile's wheels for the target (not this machine) and fetch them, provision's own
    wheel, the model and the locks into one folder or tar with a manifest of every file's sha256.

    --dry-run lists what would be fetched and its size. A re-run fetches only what is missing
    (an interrupted file continues where it stopped).
    """
    from provisioner.bundle import create as bundle_create_mod
    from provisioner.bundle import plan as bundle_plan

    options = bundle_plan.BundleOptions(
        profile=profile, model=model, revision=revision, python=python_version, platform=platform, output=output,
        torch=torch_version, index_url=index_url, extra_index_urls=extra_index_url, find_links=find_links,
        allow_insecure_index=allow_insecure_index, endpoint=endpoint, mirror=mirror)
    with ui.spinner(app, f"resolving profile {profile} for the target"):
        plan = bundle_plan.plan_bundle(options, environ=app.environ)
    if dry_run:
        if app.json:
            app.emit_json({"version": JSON_VERSION, "dry_run": True, "plan": plan.to_dict()})
        else:
            app.echo(plan.describe())
        return
    app.info(plan.describe())
    result = bundle_create_mod.apply(plan, say=app.info, transfer=lambda title: ui.transfer(app, title))
    if app.json:
        app.emit_json({"version": JSON_VERSION, **result.to_dict(), "plan": plan.to_dict()})
        return
    app.echo(f"Bundle {result.path}: {len(result.manifest.files)} files, {human_bytes(result.manifest.total_bytes)} "
             f"({result.fetched} wheel(s) fetched, {result.present} already there) in {result.seconds:.0f} s")
    app.echo(f"manifest sha256 {result.manifest.sha256} (check it on the other side: "
             f"provision bundle verify PATH --manifest-sha256 {result.manifest.sha256})")
    app.echo(f"On the offline machine: provision up --bundle {result.path.name}")


@bundle_group.command("verify")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--manifest-sha256", default=None, metavar="HEX",
              help="The manifest's sha256 as `bundle create` printed it (catches a manifest rewritten whole).")
@json_option
@pass_app
def bundle_verify(app: App, path: Path, manifest_sha256: str | None) -> None:
    """Check every file of the bundle at PATH (folder or tar) against its manifest; exit 1 naming each
    missing, truncated or altered file, or a manifest edited after it was written."""
    from provisioner import report
    from provisioner.bundle import verify as verify_mod

    with ui.spinner(app, f"checking {path}"):
        result = verify_mod.verify(path, expect_sha256=manifest_sha256)
    if app.json:
        app.emit_json(report.to_document(list(result.checks), **{"bundle": result.to_dict()}))
    else:
        ui.show(app, report.check_table(list(result.checks)), "", report.summary(list(result.checks)))
    click.get_current_context().exit(report.exit_code(result.checks))


@bundle_group.command("list")
@click.argument("path", type=click.Path(path_type=Path))
@json_option
@pass_app
def bundle_list(app: App, path: Path) -> None:
    """What the bundle at PATH holds: for which profile, Python, platform and model, each file, the total size."""
    from provisioner.bundle import manifest as mf
    from provisioner.bundle import verify as verify_mod
    from provisioner.report import rich_table

    m = verify_mod.read_manifest(path)
    if app.json:
        app.emit_json({"version": JSON_VERSION, "bundle": str(path), "manifest_sha256": m.sha256,
                       "manifest": dict(m.raw)})
        return
    model = m.model or {}
    model_text = "none" if not m.model else (
        f"{model.get('id')} @ {model.get('revision')} (commit {str(model.get('commit'))[:12]})" if model.get("commit")
        else f"{model.get('id')} (from the folder {model.get('source')})")
    head = [["profile", f"{m.profile} ({' '.join(m.torch)})"], ["python", m.python], ["platform", m.platform],
            ["model", model_text], ["created", f"{m.created} by {m.created_by}"],
            ["files", f"{len(m.files)}, {human_bytes(m.total_bytes)}"], ["manifest sha256", m.sha256]]
    rows = [[f.kind, f.path, human_bytes(f.size)] for f in sorted(m.files, key=lambda f: (f.kind, f.path))]
    by_kind: dict[str, int] = {}
    for f in m.files:
        by_kind[f.kind] = by_kind.get(f.kind, 0) + f.size
    ui.show(app, rich_table(head), "", rich_table(rows, ["kind", "file", "size"]), "",
            "total: " + ", ".join(f"{k} {human_bytes(v)}" for k, v in sorted(by_kind.items()))
            + f"; {human_bytes(m.total_bytes)} in all")
    if (m.tool or {}).get("wheel"):
        folder = path if path.is_dir() else Path(path.name.removesuffix(".tar"))
        unpack = "" if path.is_dir() else f"mkdir {folder} && tar -xf {path} -C {folder} && "
        app.echo(f"\nInstall provision from it (no network): {unpack}python{m.python} -m venv ~/.provision && "
                 f"~/.provision/bin/pip install --no-index --find-links {folder}/{mf.WHEELS} provision")
    app.echo(f"Then: provision up --bundle {path}")


# --- the offline side of other commands (`env create`, `model download`, `up` with --bundle) ----------


def env_create_from_bundle(app: App, path: Path, *, name: str | None, prefix: Path | None, backend: str,
                           installer: str, force: bool, dry_run: bool, **decided: object) -> None:
    """`env create --bundle PATH`: verify (nothing is installed on a mismatch), then build from its lock offline."""
    from provisioner.bundle import install

    install.refuse_options(**decided)
    opened = install.open_bundle(path, app.environ)
    app.info(opened.describe())
    environ = install.offline_environ(app.environ, opened)
    plan = install.plan_env(opened, root=app.root, environ=environ, name=name, prefix=prefix, backend=backend,
                            installer=installer, force=force)
    app.echo(plan.describe())
    if dry_run:
        if app.json:
            app.emit_json({"version": 1, "status": "planned", "bundle": str(opened.source), "plan": plan.to_dict()})
        return
    result = install.apply_env(opened, plan, environ=environ, progress=app.info, status=ui.spinners(app))
    if app.json:
        app.emit_json({"version": 1, **result.to_dict(), "bundle": str(opened.source), "plan": plan.to_dict()})
        return
    if result.status == "created":
        app.echo(f"Created {result.prefix} (profile {result.profile}) from {opened.source} in {result.seconds:.0f} s; "
                 f"lock: {result.lock_path}")
    app.echo(f"Use it: source {result.prefix}/bin/activate   (check it: provision verify --env {result.prefix})")


def model_from_bundle(app: App, path: Path | None, model: str | None, *, local_dir: Path | None, dry_run: bool,
                      **hub: object) -> None:
    """`model download --bundle PATH`: the bundled model's folder (verified) is the model path; with
    --local-dir its files are copied there."""
    from provisioner.bundle import install
    from provisioner.errors import UsageError

    if path is None:
        raise UsageError("give MODEL (a hub id), or --bundle PATH", hint="e.g. provision model download Qwen/Qwen3-8B")
    named = [f"--{k.replace('_', '-')}" for k, v in hub.items() if v]
    if named:
        raise UsageError(f"--bundle holds one model already; drop {', '.join(named)}",
                         hint="`provision bundle list PATH` shows the model")
    opened = install.open_bundle(path, app.environ, what="nothing was copied")
    bundled = (opened.manifest.model or {}).get("id")
    if model is not None and model != bundled:
        raise UsageError(f"bundle {path} holds {bundled or 'no model'}, not {model}", hint="drop MODEL, or give it as "
                         f"{bundled}" if bundled else "create the bundle with --model")
    folder = install.model_folder(opened, None if dry_run else local_dir)
    if app.json:
        app.emit_json({"version": 1, "model": bundled, "path": str(local_dir if dry_run and local_dir else folder),
                       "bundle": str(opened.source), "dry_run": dry_run, "commit": (opened.manifest.model or {}).get("commit")})
        return
    where = local_dir if dry_run and local_dir else folder
    app.echo(f"{bundled}: " + ("would copy to" if dry_run and local_dir else "in") + f" {where} (from bundle "
             f"{opened.source}, verified)")
    app.info(f"next: provision up --model {where}   (or provision up --bundle {path})")


def for_up(app: App, path: Path, model: str | None, profile: str,
           **decided: object) -> tuple[dict[str, str], Path, str, str]:
    """`up --bundle PATH`: the verified bundle folder, the offline environ, the model and the profile ("auto":
    the profile stage takes the bundle's)."""
    from provisioner.bundle import install
    from provisioner.errors import UsageError

    install.refuse_options(**decided)
    opened = install.open_bundle(path, app.environ)
    if profile not in ("", "auto") and profile != opened.manifest.profile:
        raise UsageError(f"bundle {path} is for profile {opened.manifest.profile}, not {profile}",
                         hint="drop --profile: the bundle decides it")
    app.info(opened.describe())
    chosen = model if model is not None else str(install.model_folder(opened))
    return install.offline_environ(app.environ, opened), opened.folder, chosen, "auto"


COMMANDS: list[click.Command] = [bundle_group]
