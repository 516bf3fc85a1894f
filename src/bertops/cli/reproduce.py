"""``bertops reproduce MODEL VERSION`` (or ``MODEL@ALIAS``): rebuild a registered version's data from its lineage.

    bertops reproduce bert-sentiment 3        # exit 0: the rebuilt data version is the recorded one
    bertops reproduce bert-sentiment@champion --keep   # keep the scratch worktree to look at
    bertops reproduce bert-sentiment 3 --train         # then fine-tune again and compare the held-out metrics

Runs in a scratch git worktree of the version's commit (never your workspace); exit 1 names the first stage
whose output differs (docs/operations.md, "Reproducing a model version").
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bertops.cli.common import (
    ParamsOption,
    SetOption,
    VerboseOption,
    console,
    exit_on,
    load_or_exit,
    setup_logging,
)


def reproduce_command(
    model: Annotated[str, typer.Argument(help="Registered model name, or NAME@ALIAS.")],
    version: Annotated[str | None, typer.Argument(help="Version number (not with NAME@ALIAS).")] = None,
    keep: Annotated[bool, typer.Option(help="Keep the scratch worktree (its path is printed).")] = False,
    train: Annotated[
        bool,
        typer.Option(
            help="Then fine-tune again with the recorded configuration and compare the held-out metrics."
        ),
    ] = False,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Rebuild a model version's data from its lineage alone and compare it with the recorded data version."""
    from bertops.orchestration.dvc_ops import DvcError
    from bertops.orchestration.reproduce import ReproduceError, reproduce_data, reproduce_training, tags_of
    from bertops.registry.errors import RegistryError
    from bertops.registry.registry import alias_version
    from bertops.tracking_client import connect

    setup_logging(verbose)
    cfg = load_or_exit(params, set_)
    root = Path.cwd()
    name, _, alias = model.partition("@")
    with exit_on(RegistryError, ReproduceError, DvcError, code=1):
        client = connect(cfg.tracking_uri())
        if alias:
            version = alias_version(client, name, alias)
            if version is None:
                raise RegistryError(f"registered model {name!r} has no alias {alias!r}")
        elif version is None:
            raise ReproduceError("give a version (bertops reproduce NAME VERSION) or an alias (NAME@ALIAS)")
        tags = tags_of(client, name, version)
        state = cfg.state_dir if cfg.state_dir.is_absolute() else root / cfg.state_dir
        console.print(
            f"{name} v{version}: rebuilding its data at commit {tags.get('bertops.git_commit')} ..."
        )
        retrain = None
        if train:
            address = cfg.finetune.scaling.address

            def retrain(tree: Path) -> object:
                console.print("data reproduced; fine-tuning again with the recorded configuration ...")
                return reproduce_training(tree, client, tags, cfg.tracking_uri(), address)

        result = reproduce_data(root, tags, state, keep=keep, train=retrain)
    overrides = ", ".join(result.data_overrides) or "none"
    console.print(f"data overrides applied: {overrides}")
    if result.worktree:
        console.print(f"worktree kept: {result.worktree}")
    if result.ok:
        console.print(
            f"[green]reproduced[/green]: data version {result.rebuilt} (recorded {result.recorded})"
        )
        if result.training is None:
            return
        t = result.training
        rule = "identical (project.deterministic)" if t.deterministic else f"within {t.tolerance} absolute"
        for key, (a, b) in t.compared.items():
            console.print(f"  {key}: recorded {a:.6g}, retrained {b:.6g}")
        if t.ok:
            console.print(f"[green]training reproduced[/green]: {len(t.compared)} held-out metrics {rule}")
            return
        console.print(
            f"[red]training not reproduced[/red] ({rule}): " + "; ".join(t.differences or ["no metric"])
        )
        raise typer.Exit(1)
    console.print(f"[red]not reproduced[/red]: data version {result.rebuilt}, recorded {result.recorded}")
    if result.first_difference:
        console.print(f"first difference: {result.first_difference}")
    for line in result.differences[1:]:
        console.print(f"  then: {line}")
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this step's commands to the ``bertops`` app."""
    app.command("reproduce")(reproduce_command)
