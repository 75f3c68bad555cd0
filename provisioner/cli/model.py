"""`provision model` commands (Click layer only): fit and download."""
from __future__ import annotations

from pathlib import Path

import click

from provisioner.cli import ui
from provisioner.cli.app import App, dry_run_option, json_option, pass_app
from provisioner.model import download, fit
from provisioner.model import info as modelinfo
from provisioner.report import rich_table
from provisioner.units import gib


@click.group("model")
def model_group() -> None:
    """Check that a model fits the GPU, and download it (mirror-safe, resumable)."""


@model_group.command("fit")
@click.argument("model")
@click.option("--context", type=click.IntRange(1, 1 << 24), default=None,
              help="Tokens per sequence (prompt + reply) to hold in the KV cache "
                   f"[default: {fit.DEFAULT_CONTEXT}, or the model's maximum if shorter].")
@click.option("--batch", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="Sequences generated at once.")
@click.option("--gpu-memory", default="auto", show_default=True, metavar="GiB|auto",
              help="Free GPU memory to fit into; auto asks NVML for the GPU's free memory.")
@click.option("--quant", type=click.Choice(fit.QUANT_CHOICES), default="auto", show_default=True,
              help="Precision to check (nf4 also reports double quantization); auto checks all.")
@click.option("--revision", default=None, help="Hub revision to read (hub ids only).")
@json_option
@pass_app
def model_fit(app: App, model: str, context: int | None, batch: int, gpu_memory: str, quant: str,
              revision: str | None) -> None:
    """Memory MODEL needs per precision, against the GPU's free memory.

    MODEL is a local folder (exact counts from its safetensors headers), a hub id (the downloaded
    snapshot, else the safetensors headers on the hub, read without the weights; config.json
    arithmetic when there are none), or a built-in Qwen name such as qwen2.5-7b-instruct or
    Qwen/Qwen3-8B (Qwen1.5, Qwen2.5, Qwen3; works offline). Exits 1 when nothing fits.
    """
    spec = modelinfo.resolve(model, environ=app.environ, revision=revision)
    mem = fit.gpu_memory(gpu_memory, environ=app.environ)
    report = fit.fit(spec, gpu_free_bytes=mem.free_bytes, context=context, batch=batch,
                     quants=fit.quants_for(quant), prefer_bf16=mem.prefer_bf16)
    failed = report.gpu_free_bytes is not None and report.recommended is None
    if app.json:
        app.emit_json(report.to_document())
    else:
        where = f"in {spec.path}" if spec.path else ""
        source = {"safetensors": f"{spec.params_source}, exact, {spec.source_note or where}",
                  "config": f"{spec.params_source} from config.json" + (f" {where}" if where else "")
                  + (f"; {spec.source_note}" if spec.source_note else ""),
                  "table": "built-in table of config values"}[spec.source]
        app.echo(f"{spec.name}: {spec.params / 1e9:.2f} B parameters ({source})")
        app.echo(f"  {spec.layers} layers, {spec.heads} heads, {spec.kv_heads} KV heads x {spec.head_dim}: "
                 f"KV cache {fit.kv_bytes_per_token(spec) / 1024:.1f} KiB per token (16-bit)")
        app.echo(f"  context {report.context} tokens x batch {batch}; GPU: {mem.source}")
        app.echo("")
        rows = []
        for o in report.options:
            fits = "-" if o.fits is None else ("yes" if o.fits else "no")
            longest = "-" if o.max_context is None else str(o.max_context)
            rows.append([o.quant, gib(o.weights_bytes), gib(o.kv_cache_bytes), gib(o.overhead_bytes),
                         gib(o.total_bytes), fits, longest])
        ui.show(app, rich_table(rows, ["precision", "weights", "KV cache", "overhead", "total", "fits", "max context"]))
        app.echo("")
        if report.recommended is not None:
            r = report.recommended
            app.echo(f"Recommended: {r.quant}, {gib(r.total_bytes)} at {report.context} tokens; "
                     f"up to {r.max_context} tokens fit with it.")
        elif report.gpu_free_bytes is None:
            app.echo("No verdict: no free-GPU-memory figure. Pass --gpu-memory GiB to check against one.")
        else:
            app.echo(f"Nothing fits in {gib(report.gpu_free_bytes)}: {report.advice}.")
        app.echo("overhead = activation workspace + 457 MiB CUDA context; nf4 weights keep embeddings, "
                 "lm_head and norms in 16 bit.")
    if failed:
        click.get_current_context().exit(1)


@model_group.command("download")
@click.argument("model", required=False)
@click.option("--revision", default=None, help="Branch, tag or commit (default: main).")
@click.option("--local-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Put the files in DIR instead of the Hugging Face cache.")
@click.option("--endpoint", default=None, metavar="URL", help="Hub API endpoint (a mirror); default HF_ENDPOINT.")
@click.option("--mirror", default=None, metavar="NAME",
              help="A known mirror by name: " + ", ".join(f"{k} ({v})" for k, v in download.MIRRORS.items()) + ".")
@click.option("--include-all", is_flag=True, help="Fetch every file, not just what a transformers load needs.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="Offline: the model a bundle holds (verified; with --local-dir, copied there).")
@dry_run_option
@json_option
@pass_app
def model_download(app: App, model: str | None, revision: str | None, local_dir: Path | None, endpoint: str | None,
                   mirror: str | None, include_all: bool, dry_run: bool, bundle: Path | None = None) -> None:
    """Download MODEL (org/name) from the hub or a mirror: resumable, with a disk check first.

    Only the files a transformers load needs (safetensors over .bin; no GGUF/ONNX/Flax/TF copies).
    Run it again after an interruption: it continues where it stopped.
    """
    if bundle is not None or model is None:
        from provisioner.cli.bundle import model_from_bundle

        return model_from_bundle(app, bundle, model, local_dir=local_dir, revision=revision, endpoint=endpoint,
                                 mirror=mirror, include_all=include_all, dry_run=dry_run)
    plan = download.plan_download(model, revision=revision, local_dir=local_dir, endpoint=endpoint, mirror=mirror,
                                  include_all=include_all, environ=app.environ)
    if app.json:
        if not dry_run:
            with ui.transfer(app, plan.repo_id) as update:      # on stderr: stdout holds the one document
                download.apply(plan, on_progress=update)
        app.emit_json({"model": plan.repo_id, "revision": plan.revision, "commit": plan.commit,
                       "endpoint": plan.endpoint.url, "path": str(plan.path), "dry_run": dry_run,
                       "files": [f.path for f in (*plan.present, *plan.files)], "bytes": plan.need_bytes,
                       "skipped": [f.path for f in plan.skipped]})
        return
    if dry_run:
        app.echo(plan.describe())
        return
    app.info(plan.describe())
    with ui.transfer(app, plan.repo_id) as update:
        result = download.apply(plan, on_progress=update)
    app.echo(f"{plan.repo_id}: {result.files} file(s) in {result.path}")
    app.info(f"next: provision model fit {result.path}")


COMMANDS: list[click.Command] = [model_group]
