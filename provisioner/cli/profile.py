"""`provision profile` commands (Click layer only)."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provisioner import profiles
from provisioner.cli import ui
from provisioner.cli.app import App, json_option, pass_app
from provisioner.errors import ProfileError
from provisioner.profiles import InvalidProfile, Profile, cc_str
from provisioner.report import rich_table

if TYPE_CHECKING:
    from rich.table import Table


@click.group("profile")
def profile_group() -> None:
    """List, show and validate profiles (torch wheel + stack for one CUDA line)."""


def _archs(p: Profile) -> str:
    if p.is_cpu:
        return "-"
    names = [cc_str(cc) + ("+PTX" if cc == p.ptx else "") for cc in p.compute_capabilities]
    return " ".join(names)


def _origin(p: Profile, app: App) -> str:
    return "user" if p.path.parent == profiles.user_dir(app.environ) else "bundled"


@profile_group.command("list")
@json_option
@pass_app
def profile_list(app: App) -> None:
    """List profiles; user profiles override bundled ones by name."""
    found = profiles.load_all(app.environ)
    if app.json:
        app.emit_json({"version": 1, "profiles": [
            dict(p.to_dict(), origin=_origin(p, app)) for p in found.values()]})
        return
    rows = [[p.name, str(p.cuda) if p.cuda else "-", str(p.torch), p.python,
             str(p.driver_min) if p.driver_min else "-", _origin(p, app), _archs(p)]
            for p in found.values()]
    ui.show(app, rich_table(rows, ["name", "cuda", "torch", "python", "min driver", "from", "archs"]))


@profile_group.command("show")
@click.argument("name")
@json_option
@pass_app
def profile_show(app: App, name: str) -> None:
    """Show profile NAME with the source of each fact.

    NAME may also be a CUDA version (12.6) for that line's default profile.
    """
    p = profiles.get(name, app.environ)
    if app.json:
        app.emit_json(dict(p.to_dict(), origin=_origin(p, app)))
        return
    ui.show(app, *_render(p, _origin(p, app)))


def _render(p: Profile, origin: str) -> list[Table | str]:
    """Its facts as two aligned columns, then where each came from."""
    commands = [shlex.join(c) for c in p.install_commands()]
    fields: list[list[str]] = [
        ["name", p.name],
        ["description", p.description or "-"],
        ["file", f"{p.path} ({origin})"],
        ["cuda", str(p.cuda) if p.cuda else "- (CPU build)"],
        ["python", p.python],
        ["torch", f"{p.torch} ({p.variant})"],
        ["index url", p.torch_index_url],
        ["torchvision", str(p.torchvision) if p.torchvision else "-"],
        ["torchaudio", str(p.torchaudio) if p.torchaudio else "-"],
        ["packages", " ".join(p.package_requirements()) or "-"],
        ["min driver", str(p.driver_min) if p.driver_min else "-"],
        ["archs", _archs(p)],
        ["install", "\n".join(commands)],
    ]
    return [rich_table(fields), "", "sources:", *(f"  {key}: {text}" for key, text in p.sources.items())]


@profile_group.command("validate")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@json_option
@pass_app
def profile_validate(app: App, files: tuple[Path, ...]) -> None:
    """Validate profile FILES, or with none every bundled and user profile (exit 2 if any is invalid).

    Every problem of every file is listed in one run.
    """
    results: list[dict[str, Any]] = []
    if not files:
        files = tuple(profiles.profile_files(app.environ))
    for path in files:
        try:
            profiles.load(path, display=str(path))
        except InvalidProfile as e:
            results.append({"path": str(path), "ok": False, "problems": list(e.problems)})
            if not app.json:
                for line in e.problems:
                    click.echo(f"error: {line}", err=True)
        else:
            results.append({"path": str(path), "ok": True, "problems": []})
            app.echo(f"ok: {path}")
    bad = [r for r in results if not r["ok"]]
    if app.json:
        app.emit_json({"version": 1, "ok": not bad, "files": results})
    if bad:
        raise ProfileError(f"{len(bad)} of {len(results)} profile file(s) invalid",
                           hint="fix the lines above, then run this again")


COMMANDS: list[click.Command] = [profile_group]
