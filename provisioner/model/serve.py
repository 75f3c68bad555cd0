"""`provision chat --web` and `provision serve`: what the environment still needs (a profile extra, installed
on first use), and the command that runs the front end's script in the environment's own python."""
from __future__ import annotations

import ipaddress
import json
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from provisioner import proc, profiles
from provisioner.env.backends import Installer, Step
from provisioner.env.record import read_record
from provisioner.env.target import EnvTarget
from provisioner.errors import CommandError, ProvisionError
from provisioner.model.smoke import SCRIPTS, script_argv

#: The profile whose extras are used for an environment provision did not build (no record naming one).
FALLBACK_PROFILE = "cpu"
#: The API key reaches serve.py through its environment: an argument would show in `ps`.
API_KEY_VAR = "PROVISION_SERVE_API_KEY"
#: Installing Gradio and its dependencies (about 100 MB) over a slow link.
INSTALL_TIMEOUT = 1800
PROBE_TIMEOUT = 60
LOOPBACK_NAMES = ("localhost", "ip6-localhost")

# Runs in the environment's python: the installed version of each named distribution, and whether pip is there.
_PROBE = (
    "import importlib.metadata as m, importlib.util as u, json, sys\n"
    "found = {}\n"
    "for name in sys.argv[1:]:\n"
    "    try:\n"
    "        found[name] = m.version(name)\n"
    "    except m.PackageNotFoundError:\n"
    "        found[name] = None\n"
    "print(json.dumps({'versions': found, 'pip': u.find_spec('pip') is not None}))\n"
)


@dataclass(frozen=True)
class FrontEnd:
    extra: str          # the profile extra it needs ("web", "serve")
    script: Path
    title: str


WEB = FrontEnd("web", SCRIPTS / "web_chat.py", "the web chat")
SERVE = FrontEnd("serve", SCRIPTS / "serve.py", "the OpenAI-compatible server")


@dataclass(frozen=True)
class Plan:
    """What `chat --web` / `serve` will do: install the extra where the environment lacks it, then run
    the script (the process becomes the server: its output, Ctrl-C and exit status are the user's)."""

    front: FrontEnd
    env: EnvTarget
    model: str
    profile: str                       # where the extra's pins come from
    profile_origin: str                # "the environment's record" | "default"
    requirements: tuple[str, ...]      # the extra, as pip requirements
    missing: tuple[str, ...]           # what is absent or outside its range, for the user
    install: Step | None
    argv: tuple[str, ...]
    notes: tuple[str, ...] = ()
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)   # extra variables (the API key)

    def describe(self) -> str:
        lines = [f"Environment: {self.env.describe()}",
                 f"Model:       {self.model}",
                 f"Extra:       {self.front.extra} = {' '.join(self.requirements)} "
                 f"(profile {self.profile}, {self.profile_origin})"]
        if self.install is not None:
            lines.append(f"Missing:     {', '.join(self.missing)}")
            lines.append(f"Install:     {self.install.shown()}")
        else:
            lines.append("Install:     nothing (the extra is installed)")
        lines.append(f"Run:         {shlex.join(self.argv)}")
        if self.environ:
            lines.append(f"             with {', '.join(sorted(self.environ))} set (the API key)")
        lines += [f"Note:        {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"front_end": self.front.extra, "env": str(self.env.prefix), "python": str(self.env.python),
                "model": self.model, "profile": self.profile, "profile_origin": self.profile_origin,
                "requirements": list(self.requirements), "missing": list(self.missing),
                "install": list(self.install.argv) if self.install is not None else None,
                "argv": list(self.argv), "environ": sorted(self.environ), "notes": list(self.notes)}


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the page to this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_note(host: str, what: str, *, api_key: bool | None = None) -> str | None:
    """The warning for a front end bound beyond this machine; None on loopback. `api_key`: None where
    the front end has no key to ask for (the web chat)."""
    if is_loopback(host):
        return None
    guard = {None: "the page asks for no password", True: "only requests with the API key are answered",
             False: "no API key is asked for (pass --api-key KEY)"}[api_key]
    return (f"warning: --host {host}: anyone who can reach this machine on that network can use {what}; "
            f"{guard}")


def extra_profile(env: EnvTarget, environ: Mapping[str, str]) -> tuple[profiles.Profile, str]:
    """The profile the environment was built from (its provision record), else FALLBACK_PROFILE."""
    record = read_record(env.prefix) or {}
    name = record.get("profile")
    if isinstance(name, str) and name:
        try:
            return profiles.get(name, environ), "the environment's record"
        except ProvisionError:
            pass
    return profiles.get(FALLBACK_PROFILE, environ), "default: the environment names no profile"


def installed(python: Path, names: Sequence[str], environ: Mapping[str, str]) -> tuple[dict[str, str | None], bool]:
    """({name: version or None}, pip present) in the environment of `python`."""
    try:
        done = proc.run([python, "-c", _PROBE, *names], env=environ, timeout=PROBE_TIMEOUT)
        doc = json.loads(done.stdout.strip().splitlines()[-1])
    except (CommandError, ValueError, IndexError) as e:
        raise ProvisionError(f"cannot ask {python} what it has installed: {e}",
                             hint="check the environment: provision verify --env PREFIX") from None
    return {str(k): (str(v) if v else None) for k, v in dict(doc["versions"]).items()}, bool(doc["pip"])


def problem(name: str, version: str | None, spec: SpecifierSet) -> str | None:
    if version is None:
        return f"{name} (not installed)"
    try:
        if spec.contains(Version(version), prereleases=True):
            return None
    except InvalidVersion:
        pass
    return f"{name} {version} (outside {profiles.spec_text(spec)})"


def installer_for(has_pip: bool, environ: Mapping[str, str]) -> Installer:
    """pip inside the environment, or uv from outside it (a uv-built venv has no pip)."""
    if has_pip:
        return Installer(None)
    uv = shutil.which("uv", path=environ.get("PATH"))
    if uv is None:
        raise ProvisionError("the environment has no pip, and uv is not on PATH to install into it",
                             hint="install uv, or pip into the environment (python -m ensurepip)")
    return Installer(Path(uv))


def plan_front_end(front: FrontEnd, env: EnvTarget, model: str, options: Mapping[str, str | int | bool | None],
                   *, environ: Mapping[str, str], api_key: str | None = None, notes: Sequence[str] = ()) -> Plan:
    """Read what the environment has, and decide what to install and what to run."""
    profile, origin = extra_profile(env, environ)
    extra = dict(profile.extras.get(front.extra) or {})
    if not extra:
        raise ProvisionError(f"profile {profile.name} has no '{front.extra}' extra to install for {front.title}",
                             hint=f"add `extras: {{{front.extra}: ...}}` to {profile.path} (see the bundled "
                                  f"profiles)")
    versions, has_pip = installed(env.python, [*extra, "torch"], environ)
    missing = tuple(p for p in (problem(name, versions.get(name), spec) for name, spec in extra.items()) if p)
    requirements = tuple(f"{name}{profiles.spec_text(spec)}" for name, spec in extra.items())
    install = None
    if missing:
        # torch pinned to what is there: the resolver then keeps the installed build, whatever is asked
        keep = [f"torch=={versions['torch']}"] if versions.get("torch") else []
        install = installer_for(has_pip, environ).install(env.python, [*requirements, *keep],
                                                          f"install {front.extra} extra")
    argv = tuple(script_argv(env.python, front.script, model, **options))
    extra_env = {API_KEY_VAR: api_key} if api_key else {}
    return Plan(front, env, model, profile.name, origin, requirements, missing, install, argv, tuple(notes),
                extra_env)


def apply_install(p: Plan, environ: Mapping[str, str]) -> None:
    """Install the missing extra into the environment."""
    if p.install is None:
        return
    try:
        proc.run(p.install.argv, env=environ, timeout=INSTALL_TIMEOUT)
    except CommandError as e:
        raise ProvisionError(f"installing {' '.join(p.requirements)} into {p.env.prefix} failed: {e.message}",
                             hint=f"run it yourself to see why: {p.install.shown()}") from None
