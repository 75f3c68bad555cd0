"""`provision cuda` commands (Click layer only)."""
from __future__ import annotations

from pathlib import Path

import click

from provisioner import cuda
from provisioner.cli import ui
from provisioner.cli.app import App, dry_run_option, json_option, pass_app
from provisioner.cuda import install as cuda_install
from provisioner.report import Status, check_table, exit_code, rich_table, summary, to_document
from provisioner.versions import CudaVersion


@click.group("cuda")
def cuda_group() -> None:
    """List, switch, roll back and install CUDA toolkits (/usr/local/cuda-X.Y)."""


@cuda_group.command("list")
@json_option
@pass_app
def cuda_list(app: App) -> None:
    """Every toolkit under /usr/local/cuda-*, its version, completeness, and the one the link uses."""
    found = cuda.toolkits(app.root, app.environ)
    link = cuda.read_link(app.root, app.environ, found)
    if app.json:
        app.emit_json({"version": 1, "link": link.to_dict(), "toolkits": [t.to_dict() for t in found]})
        return
    current = link.target_system if link.state == "ok" else None
    rows = []
    for t in found:
        mark = "*" if current is not None and cuda.resolve_under(app.root, t.system_path) == current else ""
        rows.append([mark, t.name, str(t.version) if t.version else "?", t.version_source or "-", t.condition])
    if rows:
        ui.show(app, rich_table(rows, ["", "toolkit", "version", "from", "complete"]))
    else:
        app.echo(f"no toolkits under {cuda.LOCAL}/cuda-*")
    app.echo(link.describe() + ("  (* above)" if current is not None and any(r[0] for r in rows) else ""))


@cuda_group.command("current")
@json_option
@pass_app
def cuda_current(app: App) -> None:
    """Where /usr/local/cuda points, what its nvcc reports, and whether PATH's nvcc is that one."""
    facts = cuda.gather(app.root, app.environ)
    link = facts.link if facts.link is not None else cuda.read_link(app.root, app.environ)
    checks = [cuda.judge_link(facts, app.root), cuda.judge_nvcc_path(facts, app.root)]
    if app.json:
        app.emit_json(to_document(checks, link=link.to_dict()))
    else:
        app.echo(f"link:    {link.describe()}")
        if link.managed_by:
            app.echo(f"managed: by {link.managed_by} (`cuda switch` and `cuda rollback` go through it)")
        tk = link.toolkit if link.state == "ok" else None
        if tk is not None:
            how = "reported by its nvcc" if tk.version_source == "nvcc" else f"from {tk.version_source}"
            app.echo(f"toolkit: {tk.label}, {how}")
        nvcc = checks[1].data.get("nvcc")
        app.echo(f"nvcc:    {nvcc or 'none on PATH'}")
        ui.show(app, "", check_table(checks), "", summary(checks))
    if exit_code(checks):
        click.get_current_context().exit(exit_code(checks))


def _after_switch(app: App, plan: cuda.SwitchPlan, dry_run: bool) -> None:
    if dry_run:
        app.show_plan(plan)
        return
    after = cuda.apply(plan)
    tk = after.toolkit
    if app.json:
        app.emit_json({"version": 1, "dry_run": False, **plan.to_dict(), "link": after.to_dict()})
    elif plan.unchanged:
        app.echo(f"{cuda.LINK} already points at {plan.toolkit.system_path}; "
                 f"its nvcc reports CUDA {tk.version if tk else plan.version}")
    elif plan.via is not None:
        app.echo(f"{cuda.LINK} -> {after.chain} (was {plan.current.target_system or 'dangling'}; "
                 f"switched by update-alternatives); its nvcc reports CUDA {tk.version if tk else plan.version}")
    else:
        app.echo(f"{cuda.LINK} -> {after.raw_target} (was {plan.current.raw_target or 'missing'}); "
                 f"its nvcc reports CUDA {tk.version if tk else plan.version}")
    path_check = cuda.check_nvcc_path(app.root, app.environ)
    if path_check.status is Status.WARN:
        app.info(f"note: {path_check.message}\nhint: {path_check.fix}")


@cuda_group.command("switch")
@click.argument("version")
@dry_run_option
@json_option
@pass_app
def cuda_switch(app: App, version: str, dry_run: bool) -> None:
    """Point /usr/local/cuda at the installed toolkit VERSION (12.6, cu126 or 12.6.85), atomically."""
    plan = cuda.plan_switch(CudaVersion.parse(version), app.root, app.environ)
    _after_switch(app, plan, dry_run)


@cuda_group.command("rollback")
@dry_run_option
@json_option
@pass_app
def cuda_rollback(app: App, dry_run: bool) -> None:
    """Point /usr/local/cuda back at the target recorded by the last switch."""
    plan = cuda.plan_rollback(app.root, app.environ)
    _after_switch(app, plan, dry_run)


@cuda_group.command("shell-init")
@click.option("--shell", type=click.Choice(cuda.SHELLS), default=None,
              help="Shell to write for (default: from $SHELL, else bash).")
@click.option("--apply", "apply_", is_flag=True,
              help="Rewrite the shell's rc file (idempotent; keeps a backup).")
@dry_run_option
@json_option
@pass_app
def cuda_shell_init(app: App, shell: str | None, apply_: bool, dry_run: bool) -> None:
    """Print the lines that use /usr/local/cuda on PATH and LD_LIBRARY_PATH (or --apply them)."""
    shell = shell or cuda.default_shell(app.environ)
    if not apply_:
        block = cuda.shell_init(shell)
        if app.json:
            app.emit_json({"version": 1, "shell": shell, "rc_file": str(cuda.rc_file(shell, app.environ)),
                           "text": block})
        app.echo(block, nl=False)
        return
    plan = cuda.plan_shell_init(shell, app.environ)
    app.echo(plan.describe())
    backup = None if dry_run else cuda.apply_shell_init(plan)
    if app.json:
        app.emit_json({"version": 1, "dry_run": dry_run, "shell": shell, "rc_file": str(plan.path),
                       "changed": plan.changed, "rewritten": list(plan.rewritten),
                       "backup": str(backup) if backup else None})
    if dry_run or not plan.changed:
        return
    app.info(f"wrote {plan.path}" + (f" (backup: {backup})" if backup else "")
             + "; open a new shell to use it")


@cuda_group.command("install")
@click.argument("version")
@click.option("--prefix", type=click.Path(path_type=Path), default=None,
              help="Install here instead of /usr/local/cuda-X.Y (a system path, under --root).")
@click.option("--wheel-cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar=cuda_install.WHEEL_CACHE_ENV, show_envvar=True,
              help="Keep the downloaded wheels here and install from it when they are there.")
@dry_run_option
@json_option
@pass_app
def cuda_install_cmd(app: App, version: str, prefix: Path | None, wheel_cache: Path | None,
                     dry_run: bool) -> None:
    """Install CUDA VERSION (13.x) from NVIDIA's PyPI wheels beside the others; 12.x/11.x: print how."""
    plan = cuda_install.plan_install(CudaVersion.parse(version), app.root, app.environ,
                                     prefix=prefix, wheel_cache=wheel_cache)
    if dry_run:
        app.show_plan(plan)
        return
    with ui.activity(app) as say:
        toolkit = cuda_install.apply_install(plan, progress=say)
    if app.json:
        app.emit_json({"version": 1, "dry_run": False, **plan.to_dict(), "toolkit": toolkit.to_dict()})
        return
    app.echo(f"installed {toolkit.label} into {toolkit.system_path}; its nvcc compiles")
    app.info(f"use it with `{cuda.command_line(app.root, f'cuda switch {plan.version.short}')}`")


COMMANDS: list[click.Command] = [cuda_group]
