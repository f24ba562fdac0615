"""``cfwf workflows list | describe NAME | delete NAME``: the account's workflows."""

from __future__ import annotations

import argparse
from typing import Final

import msgspec

from ..models import Workflow
from ..session import WorkflowsSession
from ._console import EXIT_OK, Console
from ._control import confirm
from ._format import format_time, json_text, note_narrowed, table
from ._waiting import waiting
from ._width import Column

__all__ = ["cmd_workflows_delete", "cmd_workflows_describe", "cmd_workflows_list"]

# The name is what one types next; the id and the times may go on a narrow terminal.
_COLUMNS: Final = (
    Column("NAME", cut=True, min_width=12),
    Column("CREATED", drop=3),
    Column("MODIFIED", drop=2),
    Column("ID", drop=1),
)


def _row(workflow: Workflow) -> list[str]:
    return [workflow.name, format_time(workflow.created_on, millis=False),
            format_time(workflow.modified_on, millis=False), workflow.id or "-"]


async def cmd_workflows_list(session: WorkflowsSession, args: argparse.Namespace,
                             console: Console) -> int:
    """``cfwf workflows list``: a table, or one JSON object per line."""
    found: list[Workflow] = []
    async with waiting(console, session.base_url, "GET workflows"):
        async for workflow in session.list_workflows():
            found.append(workflow)
    if args.json:
        for workflow in found:
            console.print(json_text(msgspec.json.encode(workflow)))
        return EXIT_OK
    if not found:
        console.note("no workflows")
        return EXIT_OK
    shown = table(console, _COLUMNS, [_row(w) for w in found])
    for line in shown.lines:
        console.print(line)
    note_narrowed(console, shown)
    return EXIT_OK


def _describe_lines(workflow: Workflow) -> list[str]:
    lines = [workflow.name]
    for label, value in (("id", workflow.id), ("class", workflow.class_name),
                         ("script", workflow.script_name)):
        lines.append(f"  {label:<10}{value or '-'}")
    for label, when in (("created", workflow.created_on), ("modified", workflow.modified_on),
                        ("triggered", workflow.triggered_on)):
        lines.append(f"  {label:<10}{format_time(when, millis=False)}")
    if workflow.instances is not None:
        counts = msgspec.to_builtins(workflow.instances)
        shown = [f"{v} {k}" for k, v in counts.items() if v is not None]
        lines.append(f"  {'instances':<10}{', '.join(shown) or '-'}")
    return lines


async def cmd_workflows_describe(session: WorkflowsSession, args: argparse.Namespace,
                                 console: Console) -> int:
    """``cfwf workflows describe NAME``: its id, class, script, times and counts."""
    async with waiting(console, session.base_url, f"GET workflow {args.workflow}"):
        workflow: Workflow = await session.get_workflow(args.workflow)
    if args.json:
        console.print(json_text(msgspec.json.encode(workflow), indent=2))
        return EXIT_OK
    for line in _describe_lines(workflow):
        console.print(line)
    return EXIT_OK


async def cmd_workflows_delete(session: WorkflowsSession, args: argparse.Namespace,
                               console: Console) -> int:
    """``cfwf workflows delete NAME``: asks first on a terminal, needs ``--yes`` elsewhere."""
    confirm(console, f"delete workflow {args.workflow} and all its instances?", yes=args.yes)
    await session.delete_workflow(args.workflow)
    if args.json:
        console.print(json_text(msgspec.json.encode({"workflow": args.workflow,
                                                      "deleted": True})))
    else:
        console.print(f"deleted workflow {args.workflow}")
    return EXIT_OK
