"""`provision fleet report` (Click layer only): many hosts' results in one table."""
from __future__ import annotations

from pathlib import Path

import click

from provisioner.cli import ui
from provisioner.cli.app import App, json_option, pass_app

#: The style in a terminal of the verdicts a check status does not name (ok / warn / FAIL look as in
#: verify's table); the word stays: NO_COLOR and pipes get it plain.
VERDICT_STYLES = {"error": "bold red", "unreachable": "bold red", "unreadable": "red"}
HEADERS = ["host", "GPU", "driver", "toolkit link", "profile", "torch", "verdict", "differs from the majority"]


@click.group("fleet")
def fleet_group() -> None:
    """Compare many hosts: one table from their saved results (Ansible, verify, report)."""


@fleet_group.command("report")
@click.argument("paths", nargs=-1, required=True, metavar="FILE|DIR...",
                type=click.Path(exists=True, path_type=Path))
@json_option
@pass_app
def fleet_report(app: App, paths: tuple[Path, ...]) -> None:
    """One row per host: GPU, driver, toolkit link, profile, torch build, verdict, and the checks
    that differ from the majority.

    FILE|DIR: the provision module's results saved by the playbook (a folder of HOST.json), or
    `provision verify --json` / `provision report --json` files. A host that failed or was
    unreachable is a row that says why. Exit 0 when every host is ok (warnings allowed), else 1.
    """
    from rich.text import Text

    from provisioner import fleet, report

    result = fleet.report(list(paths))
    if app.json:
        app.emit_json(result.to_document())
    else:
        styles = {**{report.MARKS[s]: style for s, style in report.STYLES.items()}, **VERDICT_STYLES}
        rows: list[list[report.Cell]] = [
            [r.host, r.gpu or "?", r.driver or "?", r.link or "?", r.profile or "-", r.torch or "-",
             Text(r.verdict, style=styles.get(r.verdict, "")), fleet.differs_text(r) or "-"]
            for r in result.rows]
        why = [f"{r.host}: {r.verdict}: {r.reason}" for r in result.rows if r.reason]
        counts = ", ".join(f"{n} {v}" for v, n in result.counts().items())
        ui.show(app, report.rich_table(rows, HEADERS), *([""] + why if why else []), "",
                f"{len(result.rows)} host(s): {counts}")
    if not result.ok:
        raise SystemExit(1)


COMMANDS: list[click.Command] = [fleet_group]
