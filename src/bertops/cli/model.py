"""CLI commands for the model step.

``bertops convert hf:<dir>|google:<dir> OUT``  import a pretrained checkpoint into a bertops bundle
``bertops model info BUNDLE``                  print a bundle's task, architecture and labels
``bertops model export BUNDLE OUT``            write a classifier bundle as a TF Serving SavedModel

TensorFlow is imported inside the commands only, so ``bertops --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bertops.cli.common import VerboseOption, console, exit_on, setup_logging

model_app = typer.Typer(help="Inspect and export model bundles.", no_args_is_help=True)


def _spec(source: str) -> str:
    """``hf:<dir>`` / ``google:<dir>`` as given, or a bare directory recognised by its config file."""
    if source.startswith(("hf:", "google:")):
        return source
    path = Path(source)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return f"hf:{path}"
    if (path / "bert_config.json").is_file():
        return f"google:{path}"
    raise typer.BadParameter(
        f"{source}: neither a Hugging Face dir (config.json + model.safetensors) nor Google's "
        "(bert_config.json + bert_model.ckpt.*); prefix it with hf: or google:",
        param_hint="SOURCE",
    )


def convert_command(
    source: Annotated[str, typer.Argument(help="hf:<dir>, google:<dir>, or a checkpoint directory.")],
    out: Annotated[Path, typer.Argument(help="The bundle directory to write.")],
    max_seq_length: Annotated[int, typer.Option(help="Sequence length recorded in the bundle.")] = 128,
    dtype: Annotated[str, typer.Option(help="float32 | mixed_bfloat16 | mixed_float16")] = "float32",
    vocab: Annotated[Path | None, typer.Option(help="vocab.txt, if not in the checkpoint directory.")] = None,
    lowercase: Annotated[bool | None, typer.Option(help="Override the detected casing.")] = None,
    verbose: VerboseOption = False,
) -> None:
    """Convert an HF or Google BERT checkpoint into a bertops bundle and print what was loaded."""
    from rich.table import Table

    from bertops.model.bundle import BundleError, save_bundle
    from bertops.model.checkpoints import CheckpointError, import_checkpoint

    setup_logging(verbose)
    with exit_on(CheckpointError, BundleError):
        result = import_checkpoint(_spec(source), dtype=dtype)
        vocab_file = vocab or result.vocab_file
        if vocab_file is None:
            raise CheckpointError(f"{source}: no vocab.txt in the checkpoint directory; pass --vocab")
        task = "pretraining" if result.pretrainer is not None else "backbone"
        save_bundle(
            out,
            result.model,
            vocab_file,
            task=task,
            max_seq_length=max_seq_length,
            lowercase=result.lowercase if lowercase is None else lowercase,
            strip_accents=result.lowercase if lowercase is None else lowercase,
            extra={"imported_from": result.source},
        )
    arch = result.architecture
    table = Table(title=f"imported {result.source}", show_header=False)
    table.add_row("architecture", f"{arch.num_layers} layers, hidden {arch.hidden_dim}, {arch.num_heads} heads, "
                  f"intermediate {arch.intermediate_dim}, vocab {arch.vocabulary_size}, positions {arch.max_sequence_length}")  # fmt: skip
    table.add_row("parameters", f"{result.model.count_params():,}")
    table.add_row("variables loaded", str(len(result.loaded)))
    table.add_row("ignored", ", ".join(result.ignored) or "-")
    table.add_row("absent (fresh init)", ", ".join(result.absent_optional) or "-")
    table.add_row("bundle", f"{out} (task {task}, {type(result.model).__name__})")
    console.print(table)


@model_app.command("info")
def info_command(bundle: Annotated[Path, typer.Argument(help="A bundle directory.")]) -> None:
    """Print a bundle's metadata (task, architecture, labels, lineage) without loading TensorFlow."""
    import json

    from bertops.model.bundle import BundleError, read_labels, read_meta

    with exit_on(BundleError):
        meta = read_meta(bundle)
        labels = read_labels(bundle)
    console.print_json(json.dumps({**meta, "labels": labels}))


@model_app.command("export")
def export_command(
    bundle: Annotated[Path, typer.Argument(help="A classification bundle directory.")],
    out: Annotated[Path, typer.Argument(help="SavedModel directory, e.g. export/bert-sentiment/1.")],
) -> None:
    """Export a classifier bundle as a TensorFlow SavedModel (serving_default: token ids in, probabilities out)."""
    from bertops.model.bundle import BundleError
    from bertops.model.export import export_saved_model

    setup_logging(False)
    with exit_on(BundleError):
        path = export_saved_model(bundle, out)
    console.print(f"SavedModel written to [bold]{path}[/bold] (signature serving_default)")


def register(app: typer.Typer) -> None:
    """Add this step's commands to the ``bertops`` app."""
    app.command("convert")(convert_command)
    app.add_typer(model_app, name="model")
